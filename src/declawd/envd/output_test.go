package main

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

func TestOutputLogNumbersEventsFromOne(t *testing.T) {
	o := newOutputLog(100)
	if s := o.append(streamStdout, []byte("a")); s != 1 {
		t.Fatalf("first seq = %d", s)
	}
	if s := o.append(streamStderr, []byte("b")); s != 2 {
		t.Fatalf("second seq = %d", s)
	}
	evs, all := o.since(1, 1<<20)
	if !all || len(evs) != 1 || evs[0].seq != 2 {
		t.Fatalf("since(1) = %+v %v", evs, all)
	}
}

func TestOutputLogDropsOldestOfTheOverflowingStreamOnly(t *testing.T) {
	o := newOutputLog(10)
	o.append(streamStderr, []byte("keep"))
	for i := 0; i < 5; i++ {
		o.append(streamStdout, []byte{byte('0' + i), byte('0' + i), byte('0' + i), byte('0' + i)})
	}
	if got := o.collect(streamStdout); !bytes.Equal(got, []byte("33334444")) {
		t.Fatalf("stdout = %q", got)
	}
	if got := o.collect(streamStderr); string(got) != "keep" {
		t.Fatalf("stderr = %q", got)
	}
	if !o.truncated[streamStdout] || o.truncated[streamStderr] {
		t.Fatalf("truncated = %v", o.truncated)
	}
}

func TestOutputLogCompactionKeepsReplayBySeq(t *testing.T) {
	o := newOutputLog(8)
	for i := 0; i < 5000; i++ {
		o.append(streamStdout, []byte("xx"))
	}
	if len(o.events) > 3000 {
		t.Fatalf("not compacted: %d entries", len(o.events))
	}
	evs, _ := o.since(4998, 1<<20)
	if len(evs) != 2 || evs[0].seq != 4999 || evs[1].seq != 5000 {
		t.Fatalf("since(4998) = %+v", evs)
	}
}

func TestSinceLimitsABatchButReturnsAtLeastOneEvent(t *testing.T) {
	o := newOutputLog(1 << 20)
	o.append(streamStdout, make([]byte, 100))
	o.append(streamStdout, make([]byte, 100))
	evs, all := o.since(0, 10)
	if len(evs) != 1 || all {
		t.Fatalf("got %d events, all=%v", len(evs), all)
	}
}

func TestLookupAccountReadsPasswdAndGroups(t *testing.T) {
	dir := t.TempDir()
	passwd := filepath.Join(dir, "passwd")
	group := filepath.Join(dir, "group")
	os.WriteFile(passwd, []byte("root:x:0:0:root:/root:/bin/bash\n# c\nuser:x:1000:1000::/home/user:\n"), 0o644)
	os.WriteFile(group, []byte("user:x:1000:\nsudo:x:27:user,other\naudio:x:29:other\n"), 0o644)
	acc, err := lookupAccountIn("user", passwd, group)
	if err != nil {
		t.Fatal(err)
	}
	if acc.Uid != 1000 || acc.Gid != 1000 || acc.Home != "/home/user" || acc.Shell != "/bin/sh" {
		t.Fatalf("account = %+v", acc)
	}
	if len(acc.Groups) != 2 || acc.Groups[0] != 1000 || acc.Groups[1] != 27 {
		t.Fatalf("groups = %v", acc.Groups)
	}
	if _, err := lookupAccountIn("nobody", passwd, group); err == nil || err.Error() != "unknown user: nobody" {
		t.Fatalf("unknown user error = %v", err)
	}
}

func TestBuildEnvOverlaysRequestEnvs(t *testing.T) {
	acc := &account{Name: "user", Home: "/home/user", Shell: "/bin/bash"}
	env, err := buildEnv(acc, map[string]string{"PATH": "/x", "A": "1"}, true)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"A=1", "HOME=/home/user", "LOGNAME=user", "PATH=/x", "SHELL=/bin/bash", "TERM=xterm-256color", "USER=user"}
	if len(env) != len(want) {
		t.Fatalf("env = %v", env)
	}
	for i := range want {
		if env[i] != want[i] {
			t.Fatalf("env = %v", env)
		}
	}
	if _, err := buildEnv(acc, map[string]string{"A=B": "1"}, false); err == nil {
		t.Fatal("accepted a key containing '='")
	}
}

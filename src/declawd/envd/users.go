// Users and groups from the sandbox's own /etc/passwd and /etc/group.
//
// The files are re-read on every request because commands may add users at any
// time (useradd in a template build); no libc/NSS is involved, so envd works in any
// Debian-based template as a static binary.
package main

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
)

type account struct {
	Name   string
	Uid    uint32
	Gid    uint32
	Home   string
	Shell  string
	Groups []uint32 // supplementary groups, including the primary gid
}

type unknownUserError struct{ name string }

func (e unknownUserError) Error() string { return fmt.Sprintf("unknown user: %s", e.name) }

func lookupAccount(name string) (*account, error) {
	return lookupAccountIn(name, "/etc/passwd", "/etc/group")
}

func lookupAccountIn(name, passwdPath, groupPath string) (*account, error) {
	if name == "" {
		return nil, unknownUserError{name}
	}
	acc, err := findPasswd(name, passwdPath)
	if err != nil {
		return nil, err
	}
	acc.Groups = []uint32{acc.Gid}
	_ = scanColonFile(groupPath, 4, func(f []string) bool {
		gid, err := strconv.ParseUint(f[2], 10, 32)
		if err != nil || uint32(gid) == acc.Gid {
			return true
		}
		for _, member := range strings.Split(f[3], ",") {
			if strings.TrimSpace(member) == name {
				acc.Groups = append(acc.Groups, uint32(gid))
				break
			}
		}
		return true
	})
	return acc, nil
}

func findPasswd(name, path string) (*account, error) {
	var acc *account
	err := scanColonFile(path, 7, func(f []string) bool {
		if f[0] != name {
			return true
		}
		uid, err1 := strconv.ParseUint(f[2], 10, 32)
		gid, err2 := strconv.ParseUint(f[3], 10, 32)
		if err1 != nil || err2 != nil {
			return true
		}
		acc = &account{Name: name, Uid: uint32(uid), Gid: uint32(gid), Home: f[5], Shell: f[6]}
		return false
	})
	if err != nil && !os.IsNotExist(err) {
		return nil, err
	}
	if acc == nil {
		return nil, unknownUserError{name}
	}
	if acc.Home == "" {
		acc.Home = "/"
	}
	if acc.Shell == "" {
		acc.Shell = "/bin/sh"
	}
	return acc, nil
}

// scanColonFile calls fn with the fields of each well-formed line until fn returns false.
func scanColonFile(path string, nfields int, fn func([]string) bool) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		fields := strings.Split(line, ":")
		if len(fields) < nfields {
			continue
		}
		if !fn(fields) {
			break
		}
	}
	return sc.Err()
}

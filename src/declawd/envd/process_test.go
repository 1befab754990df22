package main

import (
	"bytes"
	"os"
	"testing"
	"time"
)

func newTestProcess() *process {
	return &process{out: newOutputLog(outputCap), changed: make(chan struct{}), done: make(chan struct{})}
}

// A pump that gets no CPU until after its exit deadline passed (32 commands at once on
// 2 cores) must still read what the process wrote before it exited: it is all in the
// pipe's buffer. Before drainNow the first Read failed on the expired deadline and the
// output was lost (empty stdout with the right exit code).
func TestPumpStarvedPastItsDeadlineStillReadsWhatWasBuffered(t *testing.T) {
	r, w, err := pipe(true)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()                                        // a background grandchild still holds the write end: no EOF
	want := bytes.Repeat([]byte("0123456789abcdef"), 3000) // 48000 bytes: below the pipe's 64 KiB
	if _, err := w.Write(want); err != nil {
		t.Fatal(err)
	}
	if err := r.SetReadDeadline(time.Now().Add(-time.Second)); err != nil {
		t.Fatal(err)
	}
	p := newTestProcess()
	p.readers.Add(1)
	done := make(chan struct{})
	go func() { p.pump(r, streamStdout); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("the pump did not stop after its deadline")
	}
	if got := p.out.collect(streamStdout); !bytes.Equal(got, want) {
		t.Fatalf("read %d of %d bytes", len(got), len(want))
	}
}

// A pipe held open after the exit ends the pump at the deadline, with what came before.
func TestPumpStopsAtTheDeadlineWhenThePipeStaysOpen(t *testing.T) {
	r, w, err := pipe(true)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	p := newTestProcess()
	p.readers.Add(1)
	p.outputs = []*os.File{r}
	go p.pump(r, streamStdout)
	if _, err := w.Write([]byte("before exit\n")); err != nil {
		t.Fatal(err)
	}
	began := time.Now()
	_ = r.SetReadDeadline(time.Now().Add(exitGrace))
	p.readers.Wait()
	if waited := time.Since(began); waited > 10*time.Second {
		t.Fatalf("pump held on for %v", waited)
	}
	if got := string(p.out.collect(streamStdout)); got != "before exit\n" {
		t.Fatalf("output %q", got)
	}
}

// Writes that reach EOF end the pump at once, deadline or not.
func TestPumpEndsAtEOF(t *testing.T) {
	r, w, err := pipe(true)
	if err != nil {
		t.Fatal(err)
	}
	p := newTestProcess()
	p.readers.Add(1)
	go p.pump(r, streamStdout)
	_, _ = w.Write([]byte("x"))
	w.Close()
	p.readers.Wait()
	if got := string(p.out.collect(streamStdout)); got != "x" {
		t.Fatalf("output %q", got)
	}
}

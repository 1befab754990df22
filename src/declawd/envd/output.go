// Per-process output log: every chunk of stdout/stderr/PTY output as a numbered event.
//
// Invariants: seq numbers start at 1 and strictly increase; each stream keeps at most
// streamCap bytes in memory, dropping its oldest chunks (and flagging truncation) so a
// chatty process cannot exhaust the sandbox; replay by seq stays O(log n).
package main

import "sort"

const (
	streamStdout = 0 // also carries PTY output
	streamStderr = 1
)

type event struct {
	seq    int64
	stream int
	data   []byte // nil once dropped
}

type outputLog struct {
	cap       int64
	events    []event
	nextSeq   int64
	bytes     [2]int64
	cursor    [2]int // first index that may still hold a live chunk of the stream
	dropped   int    // dropped entries still in events
	truncated [2]bool
}

func newOutputLog(capPerStream int64) *outputLog {
	return &outputLog{cap: capPerStream, nextSeq: 1}
}

func (o *outputLog) append(stream int, data []byte) int64 {
	seq := o.nextSeq
	o.nextSeq++
	o.events = append(o.events, event{seq: seq, stream: stream, data: data})
	o.bytes[stream] += int64(len(data))
	for o.bytes[stream] > o.cap {
		i := o.cursor[stream]
		for o.events[i].stream != stream || o.events[i].data == nil {
			i++
		}
		o.bytes[stream] -= int64(len(o.events[i].data))
		o.events[i].data = nil
		o.dropped++
		o.truncated[stream] = true
		o.cursor[stream] = i + 1
	}
	if o.dropped > 1024 && o.dropped*2 > len(o.events) {
		o.compact()
	}
	return seq
}

// compact forgets dropped entries so an endless stream of tiny chunks stays bounded.
func (o *outputLog) compact() {
	live := make([]event, 0, len(o.events)-o.dropped)
	for _, e := range o.events {
		if e.data != nil {
			live = append(live, e)
		}
	}
	o.events = live
	o.dropped = 0
	o.cursor = [2]int{}
}

// since returns live events with seq > after, at most maxBytes of data (always at
// least one event when any is available), and whether it returned everything.
func (o *outputLog) since(after int64, maxBytes int) ([]event, bool) {
	i := sort.Search(len(o.events), func(i int) bool { return o.events[i].seq > after })
	var out []event
	size := 0
	for ; i < len(o.events); i++ {
		e := o.events[i]
		if e.data == nil {
			continue
		}
		if len(out) > 0 && size+len(e.data) > maxBytes {
			return out, false
		}
		out = append(out, e)
		size += len(e.data)
	}
	return out, true
}

func (o *outputLog) lastSeq() int64 { return o.nextSeq - 1 }

func (o *outputLog) collect(stream int) []byte {
	buf := make([]byte, 0, o.bytes[stream])
	for _, e := range o.events {
		if e.stream == stream && e.data != nil {
			buf = append(buf, e.data...)
		}
	}
	return buf
}

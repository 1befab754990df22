// HTTP routing, JSON helpers and the process routes.
//
// Go 1.19's ServeMux has no method or wildcard patterns, so routes are matched by
// hand. Every error is a JSON {"message","code"}; request bodies are bounded so a
// single connection cannot make envd allocate without limit.
package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"syscall"
)

const (
	maxJSONBody    = 96 << 20 // base64 stdin payloads can be large
	streamBatchMax = 1 << 20  // event data sent per write while replaying
)

type apiError struct {
	status  int
	code    string
	message string
}

func (e *apiError) Error() string { return e.message }

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(v)
}

func writeError(w http.ResponseWriter, status int, code, message string) {
	writeJSON(w, status, map[string]string{"message": message, "code": code})
}

func writeErr(w http.ResponseWriter, err error) {
	var ae *apiError
	var se *spawnError
	switch {
	case errors.As(err, &ae):
		writeError(w, ae.status, ae.code, ae.message)
	case errors.As(err, &se):
		writeError(w, se.status, se.code, se.message)
	default:
		writeError(w, 500, "internal", err.Error())
	}
}

func decodeJSON(w http.ResponseWriter, r *http.Request, v any) bool {
	body := http.MaxBytesReader(w, r.Body, maxJSONBody)
	dec := json.NewDecoder(body)
	if err := dec.Decode(v); err != nil {
		writeError(w, 400, "invalid", fmt.Sprintf("invalid JSON body: %v", err))
		return false
	}
	return true
}

type router struct {
	procs   *processTable
	reaper  *reaper
	watches *watchTable
}

func newRouter(procs *processTable, r *reaper, watches *watchTable) http.Handler {
	return &router{procs: procs, reaper: r, watches: watches}
}

func (rt *router) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	path := strings.TrimSuffix(r.URL.Path, "/")
	parts := strings.Split(strings.TrimPrefix(path, "/"), "/")
	m := r.Method
	switch {
	case path == "/health" && m == "GET":
		writeJSON(w, 200, map[string]any{"ok": true, "version": version})
	case parts[0] == "processes":
		rt.serveProcesses(w, r, parts[1:])
	case parts[0] == "files":
		serveFiles(w, r, parts[1:])
	case parts[0] == "watch":
		rt.serveWatch(w, r, parts[1:])
	default:
		writeError(w, 404, "not_found", fmt.Sprintf("no route: %s %s", m, r.URL.Path))
	}
}

func (rt *router) serveProcesses(w http.ResponseWriter, r *http.Request, rest []string) {
	m := r.Method
	if len(rest) == 0 {
		switch m {
		case "GET":
			writeJSON(w, 200, rt.procs.list())
		case "POST":
			var req startRequest
			if !decodeJSON(w, r, &req) {
				return
			}
			p, err := spawn(&req, rt.procs, rt.reaper)
			if err != nil {
				writeErr(w, err)
				return
			}
			writeJSON(w, 200, map[string]int{"pid": p.pid})
		default:
			writeError(w, 405, "invalid", "method not allowed")
		}
		return
	}
	pid, err := strconv.Atoi(rest[0])
	if err != nil {
		writeError(w, 400, "invalid", "invalid pid: "+rest[0])
		return
	}
	p := rt.procs.get(pid)
	if p == nil {
		writeError(w, 404, "not_found", fmt.Sprintf("process %d not found", pid))
		return
	}
	action := strings.Join(rest[1:], "/")
	switch {
	case action == "" && m == "GET":
		writeJSON(w, 200, p.info())
	case action == "events" && m == "GET":
		streamEvents(w, r, p)
	case action == "wait" && m == "GET":
		waitProcess(w, r, p)
	case action == "stdin" && m == "POST":
		var body struct {
			Data []byte `json:"data"`
		}
		if !decodeJSON(w, r, &body) {
			return
		}
		if err := p.writeStdin(body.Data); err != nil {
			writeError(w, 400, "invalid", fmt.Sprintf("stdin of process %d: %v", pid, err))
			return
		}
		writeJSON(w, 200, map[string]bool{"ok": true})
	case action == "stdin/close" && m == "POST":
		p.closeStdin()
		writeJSON(w, 200, map[string]bool{"ok": true})
	case action == "signal" && m == "POST":
		var body struct {
			Signal int `json:"signal"`
		}
		if !decodeJSON(w, r, &body) {
			return
		}
		if body.Signal <= 0 || body.Signal > 64 {
			writeError(w, 400, "invalid", fmt.Sprintf("invalid signal: %d", body.Signal))
			return
		}
		writeJSON(w, 200, map[string]bool{"ok": p.signalGroup(syscall.Signal(body.Signal))})
	case action == "resize" && m == "POST":
		var size ptySize
		if !decodeJSON(w, r, &size) {
			return
		}
		if !p.isPty {
			writeError(w, 400, "invalid", fmt.Sprintf("process %d has no pty", pid))
			return
		}
		if size.Cols == 0 || size.Rows == 0 {
			writeError(w, 400, "invalid", "cols and rows must be positive")
			return
		}
		if err := setWinsize(p.masterFd, size); err != nil {
			writeError(w, 400, "invalid", fmt.Sprintf("resize process %d: %v", pid, err))
			return
		}
		writeJSON(w, 200, map[string]bool{"ok": true})
	default:
		writeError(w, 404, "not_found", fmt.Sprintf("no route: %s %s", m, r.URL.Path))
	}
}

type wireEvent struct {
	Seq      int64  `json:"seq"`
	Type     string `json:"type"`
	Data     []byte `json:"data,omitempty"`
	ExitCode *int   `json:"exit_code,omitempty"`
	Signal   int    `json:"signal,omitempty"`
}

// streamEvents replays events after ?since=N and follows live output until exit.
// A dropped client only ends this handler; the process is unaffected.
func streamEvents(w http.ResponseWriter, r *http.Request, p *process) {
	since := int64(0)
	if s := r.URL.Query().Get("since"); s != "" {
		v, err := strconv.ParseInt(s, 10, 64)
		if err != nil || v < -1 {
			writeError(w, 400, "invalid", "invalid since: "+s)
			return
		}
		since = v
	}
	p.mu.Lock()
	if since == -1 {
		since = p.out.lastSeq()
	}
	p.mu.Unlock()
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(200)
	flusher, _ := w.(http.Flusher)
	if flusher != nil {
		flusher.Flush()
	}
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	typ := "stdout"
	if p.isPty {
		typ = "pty"
	}
	for {
		p.mu.Lock()
		evs, complete := p.out.since(since, streamBatchMax)
		finished := p.finished && complete
		var exit wireEvent
		if finished {
			code := p.exitCode
			exit = wireEvent{Seq: p.exitSeq, Type: "exit", ExitCode: &code, Signal: p.signal}
		}
		changed := p.changed
		p.mu.Unlock()
		for _, e := range evs {
			t := typ
			if e.stream == streamStderr {
				t = "stderr"
			}
			if enc.Encode(wireEvent{Seq: e.seq, Type: t, Data: e.data}) != nil {
				return
			}
			since = e.seq
		}
		if finished {
			_ = enc.Encode(exit)
		}
		if flusher != nil {
			flusher.Flush()
		}
		if finished {
			return
		}
		if len(evs) > 0 && !complete {
			continue
		}
		select {
		case <-changed:
		case <-r.Context().Done():
			return
		}
	}
}

func waitProcess(w http.ResponseWriter, r *http.Request, p *process) {
	select {
	case <-p.done:
	case <-r.Context().Done():
		return
	}
	p.mu.Lock()
	resp := map[string]any{
		"stdout":    p.out.collect(streamStdout),
		"stderr":    p.out.collect(streamStderr),
		"exit_code": p.exitCode,
		"truncated": p.out.truncated[0] || p.out.truncated[1],
	}
	if p.signal != 0 {
		resp["signal"] = p.signal
	}
	p.mu.Unlock()
	writeJSON(w, 200, resp)
}

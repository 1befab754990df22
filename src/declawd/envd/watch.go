// Filesystem watches (inotify) and their NDJSON event streams.
//
// Watches are added with the requesting user's credentials, so a user can only
// watch what it may read. Each watch keeps a bounded event log (oldest dropped)
// that streams replay and follow; a recursive watch adds new subdirectories as
// they appear. Deleting a watch closes its inotify fd and ends its streams.
package main

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

const (
	watchMask = syscall.IN_CREATE | syscall.IN_MODIFY | syscall.IN_DELETE | syscall.IN_DELETE_SELF |
		syscall.IN_MOVED_FROM | syscall.IN_MOVED_TO | syscall.IN_ATTRIB
	watchLogCap  = 10000
	maxWatches   = 256
	inotifyEvent = syscall.SizeofInotifyEvent
)

type watchEvent struct {
	Seq       int64   `json:"seq"`
	Type      string  `json:"type"`
	Path      string  `json:"path"`
	Timestamp float64 `json:"timestamp"`
}

type watch struct {
	id        string
	root      string
	recursive bool
	acc       *account
	file      *os.File
	fd        int // raw fd: calling file.Fd() would switch it to blocking mode

	mu      sync.Mutex
	wds     map[int32]string
	events  []watchEvent
	nextSeq int64
	closed  bool
	changed chan struct{}
}

type watchTable struct {
	mu   sync.Mutex
	byID map[string]*watch
}

func newWatchTable() *watchTable { return &watchTable{byID: map[string]*watch{}} }

func newWatchID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return "w" + hex.EncodeToString(b[:])
}

func (t *watchTable) create(path string, acc *account, recursive bool) (*watch, error) {
	t.mu.Lock()
	n := len(t.byID)
	t.mu.Unlock()
	if n >= maxWatches {
		return nil, &apiError{409, "exists", fmt.Sprintf("too many watches (%d)", maxWatches)}
	}
	fd, err := syscall.InotifyInit1(syscall.IN_CLOEXEC | syscall.IN_NONBLOCK)
	if err != nil {
		return nil, fsError(err, path)
	}
	wt := &watch{id: newWatchID(), root: path, recursive: recursive, acc: acc, fd: fd,
		file: os.NewFile(uintptr(fd), "inotify"), wds: map[int32]string{}, nextSeq: 1,
		changed: make(chan struct{})}
	err = asUser(acc, func() error {
		if _, err := os.Stat(path); err != nil {
			return err
		}
		return wt.addTree(path)
	})
	if err != nil {
		wt.file.Close()
		return nil, fsError(err, path)
	}
	t.mu.Lock()
	t.byID[wt.id] = wt
	t.mu.Unlock()
	go wt.read()
	return wt, nil
}

// addTree watches dir and, for a recursive watch, every directory below it.
// Runs with the user's credentials (inside asUser).
func (wt *watch) addTree(dir string) error {
	if err := wt.addOne(dir); err != nil {
		return err
	}
	if !wt.recursive {
		return nil
	}
	return filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == dir || !d.IsDir() {
			return nil // unreadable or vanished subtrees are skipped
		}
		_ = wt.addOne(p)
		return nil
	})
}

func (wt *watch) addOne(dir string) error {
	wd, err := syscall.InotifyAddWatch(wt.fd, dir, watchMask)
	if err != nil {
		return err
	}
	wt.mu.Lock()
	wt.wds[int32(wd)] = dir
	wt.mu.Unlock()
	return nil
}

func (wt *watch) read() {
	buf := make([]byte, 64<<10)
	for {
		n, err := wt.file.Read(buf)
		if err != nil {
			return // closed by unwatch
		}
		for off := 0; off+inotifyEvent <= n; {
			wd := int32(binary.LittleEndian.Uint32(buf[off:]))
			mask := binary.LittleEndian.Uint32(buf[off+4:])
			nameLen := int(binary.LittleEndian.Uint32(buf[off+12:]))
			name := strings.TrimRight(string(buf[off+inotifyEvent:off+inotifyEvent+nameLen]), "\x00")
			off += inotifyEvent + nameLen
			wt.handle(wd, mask, name)
		}
	}
}

func (wt *watch) handle(wd int32, mask uint32, name string) {
	wt.mu.Lock()
	dir, ok := wt.wds[wd]
	if mask&syscall.IN_IGNORED != 0 {
		delete(wt.wds, wd)
	}
	wt.mu.Unlock()
	if !ok {
		return
	}
	path := dir
	if name != "" {
		path = filepath.Join(dir, name)
	}
	var typ string
	switch {
	case mask&(syscall.IN_CREATE|syscall.IN_MOVED_TO) != 0:
		typ = "create"
		if wt.recursive && mask&syscall.IN_ISDIR != 0 {
			_ = asUser(wt.acc, func() error { return wt.addTree(path) })
		}
	case mask&syscall.IN_MODIFY != 0:
		typ = "write"
	case mask&syscall.IN_DELETE != 0:
		typ = "remove"
	case mask&syscall.IN_DELETE_SELF != 0:
		if dir != wt.root {
			return // already reported by the parent's IN_DELETE
		}
		typ = "remove"
	case mask&syscall.IN_MOVED_FROM != 0:
		typ = "rename"
	case mask&syscall.IN_ATTRIB != 0:
		typ = "chmod"
	default:
		return
	}
	now := time.Now()
	wt.mu.Lock()
	defer wt.mu.Unlock()
	wt.events = append(wt.events, watchEvent{Seq: wt.nextSeq, Type: typ, Path: path,
		Timestamp: float64(now.UnixNano()) / 1e9})
	wt.nextSeq++
	if len(wt.events) > watchLogCap {
		wt.events = append([]watchEvent(nil), wt.events[len(wt.events)-watchLogCap:]...)
	}
	close(wt.changed)
	wt.changed = make(chan struct{})
}

func (wt *watch) close() {
	wt.mu.Lock()
	defer wt.mu.Unlock()
	if wt.closed {
		return
	}
	wt.closed = true
	wt.file.Close()
	close(wt.changed)
	wt.changed = make(chan struct{})
}

func (t *watchTable) remove(id string) bool {
	t.mu.Lock()
	wt := t.byID[id]
	delete(t.byID, id)
	t.mu.Unlock()
	if wt != nil {
		wt.close()
	}
	return wt != nil
}

func (t *watchTable) closeAll() {
	t.mu.Lock()
	ids := make([]string, 0, len(t.byID))
	for id := range t.byID {
		ids = append(ids, id)
	}
	t.mu.Unlock()
	for _, id := range ids {
		t.remove(id)
	}
}

func (rt *router) serveWatch(w http.ResponseWriter, r *http.Request, rest []string) {
	m := r.Method
	switch {
	case len(rest) == 0 && m == "POST":
		var body struct {
			Path      string `json:"path"`
			User      string `json:"user"`
			Recursive bool   `json:"recursive"`
		}
		if !decodeJSON(w, r, &body) {
			return
		}
		path, err := cleanPath(body.Path)
		if err != nil {
			writeErr(w, err)
			return
		}
		acc, err := userFor(body.User)
		if err != nil {
			writeErr(w, err)
			return
		}
		wt, err := rt.watches.create(path, acc, body.Recursive)
		if err != nil {
			writeErr(w, err)
			return
		}
		writeJSON(w, 200, map[string]string{"watch_id": wt.id})
	case len(rest) == 1 && m == "DELETE":
		if !rt.watches.remove(rest[0]) {
			writeError(w, 404, "not_found", "watch not found: "+rest[0])
			return
		}
		writeJSON(w, 200, map[string]bool{"ok": true})
	case len(rest) == 2 && rest[1] == "events" && m == "GET":
		rt.watches.mu.Lock()
		wt := rt.watches.byID[rest[0]]
		rt.watches.mu.Unlock()
		if wt == nil {
			writeError(w, 404, "not_found", "watch not found: "+rest[0])
			return
		}
		since := int64(0)
		if s := r.URL.Query().Get("since"); s != "" {
			v, err := strconv.ParseInt(s, 10, 64)
			if err != nil || v < 0 {
				writeError(w, 400, "invalid", "invalid since: "+s)
				return
			}
			since = v
		}
		streamWatch(w, r, wt, since)
	default:
		writeError(w, 404, "not_found", fmt.Sprintf("no route: %s %s", m, r.URL.Path))
	}
}

func streamWatch(w http.ResponseWriter, r *http.Request, wt *watch, since int64) {
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(200)
	flusher, _ := w.(http.Flusher)
	if flusher != nil {
		flusher.Flush()
	}
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	for {
		wt.mu.Lock()
		i := sort.Search(len(wt.events), func(i int) bool { return wt.events[i].Seq > since })
		batch := append([]watchEvent(nil), wt.events[i:]...)
		closed, changed := wt.closed, wt.changed
		wt.mu.Unlock()
		for _, e := range batch {
			if enc.Encode(e) != nil {
				return
			}
			since = e.Seq
		}
		if flusher != nil {
			flusher.Flush()
		}
		if closed {
			return
		}
		select {
		case <-changed:
		case <-r.Context().Done():
			return
		}
	}
}

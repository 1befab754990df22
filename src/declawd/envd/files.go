// Filesystem routes: read, write, list, stat, exists, remove, rename, mkdir.
//
// Every path is absolute and resolved by the kernel inside envd's own root (the
// sandbox's), and every operation that touches the tree runs through asUser, so
// symlinks cannot escape the sandbox and permissions are the kernel's. Only data
// copying (on an already opened fd) happens outside the user's credentials.
package main

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
)

type entryInfo struct {
	Name          string  `json:"name"`
	Path          string  `json:"path"`
	Type          string  `json:"type"`
	Size          int64   `json:"size"`
	Mode          uint32  `json:"mode"`
	Mtime         float64 `json:"mtime"`
	SymlinkTarget *string `json:"symlink_target,omitempty"`
}

// fsError maps a syscall failure on path to the API's status and code.
func fsError(err error, path string) error {
	var errno syscall.Errno
	if !errors.As(err, &errno) {
		var ae *apiError
		if errors.As(err, &ae) {
			return ae
		}
		return &apiError{500, "internal", fmt.Sprintf("%s: %v", path, err)}
	}
	switch errno {
	case syscall.ENOENT:
		return &apiError{404, "not_found", "not found: " + path}
	case syscall.EACCES, syscall.EPERM:
		return &apiError{400, "permission_denied", "permission denied: " + path}
	case syscall.EROFS:
		return &apiError{400, "permission_denied", "read-only file system: " + path}
	case syscall.EISDIR:
		return &apiError{400, "is_directory", "is a directory: " + path}
	case syscall.ENOTDIR:
		return &apiError{400, "not_directory", "not a directory: " + path}
	case syscall.EEXIST, syscall.ENOTEMPTY:
		return &apiError{409, "exists", "already exists: " + path}
	case syscall.ELOOP, syscall.ENAMETOOLONG, syscall.EINVAL, syscall.EXDEV:
		return &apiError{400, "invalid", fmt.Sprintf("%s: %v", path, errno)}
	}
	return &apiError{500, "internal", fmt.Sprintf("%s: %v", path, errno)}
}

func cleanPath(p string) (string, error) {
	if !strings.HasPrefix(p, "/") {
		return "", &apiError{400, "invalid", "path must be absolute: " + p}
	}
	if strings.ContainsRune(p, 0) {
		return "", &apiError{400, "invalid", "invalid path: " + p}
	}
	return filepath.Clean(p), nil
}

func userFor(name string) (*account, error) {
	if name == "" {
		name = "user"
	}
	acc, err := lookupAccount(name)
	if err != nil {
		return nil, &apiError{400, "invalid", err.Error()}
	}
	return acc, nil
}

// queryTarget reads ?path=&user= for the GET/PUT/DELETE routes.
func queryTarget(r *http.Request) (string, *account, error) {
	q := r.URL.Query()
	path, err := cleanPath(q.Get("path"))
	if err != nil {
		return "", nil, err
	}
	acc, err := userFor(q.Get("user"))
	return path, acc, err
}

func makeEntry(path string, fi os.FileInfo) entryInfo {
	st := fi.Sys().(*syscall.Stat_t)
	e := entryInfo{
		Name:  filepath.Base(path),
		Path:  path,
		Type:  "file",
		Size:  fi.Size(),
		Mode:  st.Mode & 0o7777,
		Mtime: float64(st.Mtim.Sec) + float64(st.Mtim.Nsec)/1e9,
	}
	if fi.IsDir() {
		e.Type = "dir"
	}
	if fi.Mode()&os.ModeSymlink != 0 {
		if target, err := os.Readlink(path); err == nil {
			e.SymlinkTarget = &target
		}
		// A symlink reports what it points to; a dangling one stays a "file".
		if tfi, err := os.Stat(path); err == nil {
			tst := tfi.Sys().(*syscall.Stat_t)
			e.Size, e.Mode = tfi.Size(), tst.Mode&0o7777
			if tfi.IsDir() {
				e.Type = "dir"
			}
		}
	}
	return e
}

func statEntry(path string) (entryInfo, error) {
	fi, err := os.Lstat(path)
	if err != nil {
		return entryInfo{}, err
	}
	return makeEntry(path, fi), nil
}

// listDir walks depth levels below dir; symlinked directories are not followed.
func listDir(dir string, depth int, out *[]entryInfo) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	names, err := f.Readdirnames(-1)
	f.Close()
	if err != nil {
		return err
	}
	sort.Strings(names)
	for _, name := range names {
		p := filepath.Join(dir, name)
		fi, err := os.Lstat(p)
		if err != nil {
			continue // vanished meanwhile
		}
		*out = append(*out, makeEntry(p, fi))
		if depth > 1 && fi.IsDir() {
			if err := listDir(p, depth-1, out); err != nil && !os.IsNotExist(err) && !os.IsPermission(err) {
				return err
			}
		}
	}
	return nil
}

func serveFiles(w http.ResponseWriter, r *http.Request, rest []string) {
	action := strings.Join(rest, "/")
	m := r.Method
	var err error
	switch {
	case action == "" && m == "GET":
		err = readFile(w, r)
	case action == "" && m == "PUT":
		err = writeFile(w, r)
	case action == "" && m == "DELETE":
		err = removePath(w, r)
	case action == "list" && m == "GET":
		err = listFiles(w, r)
	case action == "stat" && m == "GET":
		err = statFile(w, r)
	case action == "exists" && m == "GET":
		err = existsFile(w, r)
	case action == "rename" && m == "POST":
		err = renameFile(w, r)
	case action == "mkdir" && m == "POST":
		err = makeDir(w, r)
	default:
		err = &apiError{404, "not_found", fmt.Sprintf("no route: %s %s", m, r.URL.Path)}
	}
	if err != nil {
		writeErr(w, err)
	}
}

func readFile(w http.ResponseWriter, r *http.Request) error {
	path, acc, err := queryTarget(r)
	if err != nil {
		return err
	}
	var f *os.File
	err = asUser(acc, func() error {
		// O_NONBLOCK: opening a FIFO must not hang; regular files ignore it.
		fd, err := syscall.Open(path, syscall.O_RDONLY|syscall.O_CLOEXEC|syscall.O_NONBLOCK, 0)
		if err != nil {
			return err
		}
		f = os.NewFile(uintptr(fd), path)
		return nil
	})
	if err != nil {
		return fsError(err, path)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return fsError(err, path)
	}
	if fi.IsDir() {
		return &apiError{400, "is_directory", "is a directory: " + path}
	}
	if !fi.Mode().IsRegular() {
		return &apiError{400, "invalid", "not a regular file: " + path}
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.WriteHeader(200)
	_, _ = io.Copy(w, f)
	return nil
}

func writeFile(w http.ResponseWriter, r *http.Request) error {
	path, acc, err := queryTarget(r)
	if err != nil {
		return err
	}
	var f *os.File
	err = asUser(acc, func() error {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			return err
		}
		var err error
		f, err = os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
		return err
	})
	if err != nil {
		return fsError(err, path)
	}
	defer f.Close()
	n, err := io.Copy(f, r.Body)
	if err != nil {
		return fsError(err, path)
	}
	if err := f.Close(); err != nil {
		return fsError(err, path)
	}
	writeJSON(w, 200, map[string]any{"path": path, "size": n})
	return nil
}

func removePath(w http.ResponseWriter, r *http.Request) error {
	path, acc, err := queryTarget(r)
	if err != nil {
		return err
	}
	if path == "/" {
		return &apiError{400, "invalid", "refusing to remove /"}
	}
	err = asUser(acc, func() error {
		if _, err := os.Lstat(path); err != nil {
			return err
		}
		return os.RemoveAll(path)
	})
	if err != nil {
		return fsError(err, path)
	}
	writeJSON(w, 200, map[string]bool{"ok": true})
	return nil
}

func listFiles(w http.ResponseWriter, r *http.Request) error {
	path, acc, err := queryTarget(r)
	if err != nil {
		return err
	}
	depth := 1
	if d := r.URL.Query().Get("depth"); d != "" {
		if depth, err = strconv.Atoi(d); err != nil || depth < 1 {
			return &apiError{400, "invalid", "depth must be a positive integer: " + d}
		}
	}
	entries := []entryInfo{}
	err = asUser(acc, func() error {
		fi, err := os.Stat(path)
		if err != nil {
			return err
		}
		if !fi.IsDir() {
			return syscall.ENOTDIR
		}
		return listDir(path, depth, &entries)
	})
	if err != nil {
		return fsError(err, path)
	}
	writeJSON(w, 200, entries)
	return nil
}

func statFile(w http.ResponseWriter, r *http.Request) error {
	path, acc, err := queryTarget(r)
	if err != nil {
		return err
	}
	var e entryInfo
	if err := asUser(acc, func() (err error) { e, err = statEntry(path); return }); err != nil {
		return fsError(err, path)
	}
	writeJSON(w, 200, e)
	return nil
}

func existsFile(w http.ResponseWriter, r *http.Request) error {
	path, acc, err := queryTarget(r)
	if err != nil {
		return err
	}
	exists := false
	err = asUser(acc, func() error {
		_, err := os.Lstat(path)
		if err == nil {
			exists = true
			return nil
		}
		if errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ENOTDIR) {
			return nil
		}
		return err
	})
	if err != nil {
		return fsError(err, path)
	}
	writeJSON(w, 200, map[string]bool{"exists": exists})
	return nil
}

func renameFile(w http.ResponseWriter, r *http.Request) error {
	var body struct {
		OldPath string `json:"old_path"`
		NewPath string `json:"new_path"`
		User    string `json:"user"`
	}
	if !decodeJSON(w, r, &body) {
		return nil
	}
	oldPath, err := cleanPath(body.OldPath)
	if err != nil {
		return err
	}
	newPath, err := cleanPath(body.NewPath)
	if err != nil {
		return err
	}
	acc, err := userFor(body.User)
	if err != nil {
		return err
	}
	var e entryInfo
	failed := oldPath
	err = asUser(acc, func() error {
		if _, err := os.Lstat(oldPath); err != nil {
			return err
		}
		failed = newPath
		if err := os.Rename(oldPath, newPath); err != nil {
			return err
		}
		e, err = statEntry(newPath)
		return err
	})
	if err != nil {
		return fsError(err, failed)
	}
	writeJSON(w, 200, e)
	return nil
}

func makeDir(w http.ResponseWriter, r *http.Request) error {
	var body struct {
		Path string `json:"path"`
		User string `json:"user"`
	}
	if !decodeJSON(w, r, &body) {
		return nil
	}
	path, err := cleanPath(body.Path)
	if err != nil {
		return err
	}
	acc, err := userFor(body.User)
	if err != nil {
		return err
	}
	created := false
	err = asUser(acc, func() error {
		if fi, err := os.Stat(path); err == nil {
			if fi.IsDir() {
				return nil
			}
			return syscall.EEXIST
		}
		if err := os.MkdirAll(path, 0o755); err != nil {
			return err
		}
		created = true
		return nil
	})
	if err != nil {
		return fsError(err, path)
	}
	writeJSON(w, 200, map[string]bool{"created": created})
	return nil
}

// Running a file operation with a user's filesystem credentials.
//
// The operation runs on a fresh goroutine locked to its OS thread; that thread
// switches fsuid/fsgid/groups with raw per-thread syscalls (glibc-style broadcast
// to all threads must NOT happen) and is never unlocked, so the Go runtime
// terminates it when the goroutine ends and no other goroutine ever runs with
// borrowed credentials. Changing fsuid away from 0 also drops CAP_DAC_OVERRIDE and
// friends for that thread, so the kernel enforces ordinary permissions.
package main

import (
	"fmt"
	"runtime"
	"syscall"
	"unsafe"
)

// asUser runs fn with acc's filesystem identity (root acts directly).
func asUser(acc *account, fn func() error) error {
	if acc.Uid == 0 {
		return fn()
	}
	result := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// Deliberately no UnlockOSThread: the thread dies with this goroutine.
		if err := switchThreadCredentials(acc); err != nil {
			result <- err
			return
		}
		result <- fn()
	}()
	return <-result
}

func switchThreadCredentials(acc *account) error {
	groups := make([]uint32, len(acc.Groups))
	copy(groups, acc.Groups)
	var ptr unsafe.Pointer
	if len(groups) > 0 {
		ptr = unsafe.Pointer(&groups[0])
	}
	if _, _, e := syscall.RawSyscall(syscall.SYS_SETGROUPS, uintptr(len(groups)), uintptr(ptr), 0); e != 0 {
		return fmt.Errorf("setgroups: %w", e)
	}
	// setfsuid/setfsgid return the previous value and never fail loudly; verify by
	// calling again with an invalid id (-1), which only reports the current one.
	syscall.RawSyscall(syscall.SYS_SETFSGID, uintptr(acc.Gid), 0, 0)
	syscall.RawSyscall(syscall.SYS_SETFSUID, uintptr(acc.Uid), 0, 0)
	gid, _, _ := syscall.RawSyscall(syscall.SYS_SETFSGID, ^uintptr(0), 0, 0)
	uid, _, _ := syscall.RawSyscall(syscall.SYS_SETFSUID, ^uintptr(0), 0, 0)
	if uint32(uid) != acc.Uid || uint32(gid) != acc.Gid {
		return fmt.Errorf("could not switch to uid %d gid %d", acc.Uid, acc.Gid)
	}
	runtime.KeepAlive(groups)
	return nil
}

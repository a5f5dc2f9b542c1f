package main

import (
	"net"
	"os"
	"runtime"
	"sync"
	"syscall"
	"time"
)

// watcher reports, from one epoll set on one thread, the moment the client's kernel says a
// conn ended (the server's RST or FIN). The client hands a conn over once its handshake is
// done: the watcher keeps a duplicate of the socket and the Go conn is closed (no packet is
// sent: the duplicate keeps the socket open). A goroutine blocked in Read per conn would
// cost a wake-up, a TLS error path and a scheduler round per close, on the same two cores
// the server under test evicts on; the kernel's report is also the earliest moment any
// client could see the close.
type watcher struct {
	epfd int
	mu   sync.Mutex
	fds  map[int32]watched
}

type watched struct {
	f       *os.File
	tag     int
	onClose func(clientEvent)
}

func newWatcher() (*watcher, error) {
	epfd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		return nil, err
	}
	w := &watcher{epfd: epfd, fds: map[int32]watched{}}
	go w.loop()
	return w, nil
}

// add hands c over to the watcher; onClose gets its close event.
func (w *watcher) add(c net.Conn, tag int, onClose func(clientEvent)) error {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return syscall.EINVAL
	}
	f, err := tc.File()
	if err != nil {
		return err
	}
	tc.Close()
	fd := int32(f.Fd())
	w.mu.Lock()
	w.fds[fd] = watched{f: f, tag: tag, onClose: onClose}
	w.mu.Unlock()
	ev := syscall.EpollEvent{Events: syscall.EPOLLRDHUP | syscall.EPOLLIN | syscall.EPOLLONESHOT, Fd: fd}
	if err := syscall.EpollCtl(w.epfd, syscall.EPOLL_CTL_ADD, int(fd), &ev); err != nil {
		w.mu.Lock()
		delete(w.fds, fd)
		w.mu.Unlock()
		f.Close()
		return err
	}
	return nil
}

func (w *watcher) loop() {
	runtime.LockOSThread()
	events := make([]syscall.EpollEvent, 1024)
	for {
		n, err := syscall.EpollWait(w.epfd, events, -1)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return
		}
		at := time.Now().UnixNano()
		for _, ev := range events[:n] {
			w.mu.Lock()
			x, ok := w.fds[ev.Fd]
			delete(w.fds, ev.Fd)
			w.mu.Unlock()
			if !ok {
				continue
			}
			x.f.Close()
			x.onClose(clientEvent{Ev: "close", Tag: x.tag, At: at})
		}
	}
}

// closeAll closes every watched conn from the client's side, without close events.
func (w *watcher) closeAll() {
	w.mu.Lock()
	defer w.mu.Unlock()
	for fd, x := range w.fds {
		x.f.Close()
		delete(w.fds, fd)
	}
}

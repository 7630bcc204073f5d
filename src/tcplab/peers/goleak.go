// Command goleak is the Go server of `tcplab experiment fd-leak`'s Go rounds: an
// echo server in the original lab's style (net.Listen, one goroutine per
// accepted connection, a Read/Write loop), with the lab's bug: no Close().
//
// tcplab builds it at run time (`go build`, nothing downloaded, the binary
// cached per user by the hash of this file and of `go version`) and runs it in
// the experiment's private network namespace. Two modes, one bug:
//
//	-mode drop  the handler returns without Close(): nothing references the
//	            net.Conn any more, so the finalizer the net package set on
//	            its netFD ((*netFD).setAddr calls runtime.SetFinalizer(fd,
//	            (*netFD).Close), net/fd_posix.go) closes the socket after a
//	            later garbage collection: the leak heals itself, late.
//	-mode keep  the same handler, but every accepted net.Conn is also kept in
//	            a slice, as a map of sessions or a list of clients would: it
//	            stays reachable, no finalizer runs, and the fds stay leaked.
//
// Both modes accept through net.Listen's TCPListener, so Go turns keep-alive on
// for every accepted connection (15 s idle and interval: (*TCPListener).accept
// in net/tcpsock_posix.go, defaultTCPKeepAlive in net/dial.go).
//
// -tidy ADDR also listens on ADDR with a handler that does call Close(): the
// drop round sends its later traffic there, so that the runtime allocates
// (a 64 KiB buffer per connection, as on the main port) and reaches its next
// GC without leaking more sockets of its own.
//
// It prints one JSON line when it listens and one with its totals on SIGTERM
// or SIGINT; accept errors are printed in Go's own words with the back-off
// (5 ms doubling to 1 s, as net/http's Server.Serve does for a Temporary()
// error; here for any error until the listener is closed). With
// GODEBUG=gctrace=1 the runtime itself prints one line per collection to
// stderr ("gc 3 @0.512s ..."); that does not change when collections run.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// bufSize is each connection's read buffer: 64 KiB, as tcplab's servers and
// bench/peers/echo.go use. It is allocated on the heap per connection (c.Read
// is a call through the net.Conn interface, so the buffer escapes), which is
// what makes a flood of connections grow the heap and trigger collections.
const bufSize = 64 * 1024

var (
	accepted, returned, closed int64
	tidyAccepted               int64
	keptMu                     sync.Mutex
	kept                       []net.Conn // -mode keep: every accepted connection, forever
)

// handle is the lab's handler with its bug: it echoes until the peer closes or
// an error, then returns WITHOUT c.Close().
func handle(c net.Conn) {
	defer atomic.AddInt64(&returned, 1)
	buf := make([]byte, bufSize)
	for {
		n, err := c.Read(buf)
		if n > 0 {
			if _, werr := c.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return // io.EOF: the peer closed. The missing c.Close() is the bug.
		}
	}
}

// tidy is the same handler done right, for -tidy's port.
func tidy(c net.Conn) {
	defer func() {
		c.Close()
		atomic.AddInt64(&closed, 1)
	}()
	buf := make([]byte, bufSize)
	for {
		n, err := c.Read(buf)
		if n > 0 {
			if _, werr := c.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// serve accepts until the listener is closed, backing off on errors (EMFILE)
// with net/http's Server.Serve steps: 5 ms, doubling, at most 1 s (Serve does
// so only for Temporary() errors and returns on others).
func serve(ln net.Listener, keep bool, handler func(net.Conn), count *int64,
	done <-chan struct{}) {
	var delay time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			select {
			case <-done:
				return
			default:
			}
			if delay == 0 {
				delay = 5 * time.Millisecond
			} else if delay *= 2; delay > time.Second {
				delay = time.Second
			}
			fmt.Fprintf(os.Stderr, "accept: %v; retrying in %v\n", err, delay)
			time.Sleep(delay)
			continue
		}
		delay = 0
		atomic.AddInt64(count, 1)
		if keep {
			keptMu.Lock()
			kept = append(kept, c)
			keptMu.Unlock()
		}
		go handler(c)
	}
}

func main() {
	addr := flag.String("addr", "127.0.0.1:8080", "address of the leaking listener")
	mode := flag.String("mode", "drop", "drop: the handler returns without Close(); "+
		"keep: the same, and every connection is kept in a slice")
	tidyAddr := flag.String("tidy", "", "also listen on this address, with a handler that closes")
	flag.Parse()
	if *mode != "drop" && *mode != "keep" {
		fmt.Fprintln(os.Stderr, "goleak: -mode is drop or keep")
		os.Exit(2)
	}
	done := make(chan struct{})
	var tl net.Listener
	if *tidyAddr != "" {
		// Listening here first: once the leaking port listens, both do.
		var err error
		if tl, err = net.Listen("tcp", *tidyAddr); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			os.Exit(1)
		}
		go serve(tl, false, tidy, &tidyAccepted, done)
	}
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "goleak:", err)
		os.Exit(1)
	}
	hello, _ := json.Marshal(map[string]interface{}{
		"event": "listening", "addr": ln.Addr().String(), "mode": *mode,
		"go": runtime.Version(), "pid": os.Getpid(), "gomaxprocs": runtime.GOMAXPROCS(0),
		"gogc": os.Getenv("GOGC"), "godebug": os.Getenv("GODEBUG"),
	})
	fmt.Println(string(hello))

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		<-sigs
		close(done)
		ln.Close()
		if tl != nil {
			tl.Close()
		}
	}()
	serve(ln, *mode == "keep", handle, &accepted, done)

	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	keptMu.Lock()
	held := len(kept)
	keptMu.Unlock()
	totals, _ := json.Marshal(map[string]interface{}{
		"event": "totals", "accepted": atomic.LoadInt64(&accepted),
		"returned_without_close": atomic.LoadInt64(&returned), "kept": held,
		"tidy_closed": atomic.LoadInt64(&closed), "num_gc": ms.NumGC,
	})
	fmt.Println(string(totals))
}

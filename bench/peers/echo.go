//go:build ignore

// (Built on its own, by file name: `go build -o echo echo.go`. The tag keeps it
// out of `go build .` in this directory, which builds churn.go for
// bench/bomb_vs_go.py; both are package main.)

// Command echo is the Go reference echo server of bench/cpu_per_echo.py and
// bench/echo_vs_go.py, in the style of the original Go lab's server:
// net.Listen, one goroutine per accepted connection, each looping Read into
// its own 64 KiB buffer and Write of what it read, until EOF or an error, then
// Close.
//
// The loop is written out rather than calling io.Copy(conn, conn): on Linux,
// io.Copy to a *net.TCPConn goes through TCPConn.ReadFrom, which splices
// TCP to TCP (splice(2) into a pipe and out of it again, for every chunk),
// not the read/write loop the lab describes and tcplab's models do.
//
// It prints one line when it listens:
//
//	listening on 127.0.0.1:8080 (go go1.19.8, pid 1234, GOMAXPROCS 2)
//
// and on SIGINT or SIGTERM closes the listener, waits up to one second for
// the open connections to end, and prints its totals as one JSON line before
// exiting 0:
//
//	{"event":"totals","accepted":N,"open":N,"bytes_echoed":N}
//
// bytes_echoed is added up per connection when the connection ends (no shared
// counter is touched per read), so it counts the connections that ended; open
// says how many had not when it was printed.
//
// With -reuseport the listener sets SO_REUSEPORT before bind (through
// net.ListenConfig.Control), so several copies listen on one address and port,
// each with its own accept queue: bench/c100k.py runs six, as `tcplab server
// --workers 6` runs six processes, since one process may not hold more than
// the hard fd limit (20,000 here) of connections.
//
// Build and run (bench/echo_vs_go.py does both, in a private network namespace):
//
//	go build -o /tmp/echo echo.go && /tmp/echo -addr 127.0.0.1:8080
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"runtime"
	"sync/atomic"
	"syscall"
	"time"
)

const bufSize = 64 * 1024

// soReuseport is SO_REUSEPORT on Linux (include/uapi/asm-generic/socket.h: 15);
// Go 1.19's frozen syscall package does not name it (golang.org/x/sys/unix does).
const soReuseport = 0xf

type totals struct {
	Event       string `json:"event"`
	Accepted    int64  `json:"accepted"`
	Open        int64  `json:"open"`
	BytesEchoed int64  `json:"bytes_echoed"`
}

var accepted, open, echoed int64

func handle(c net.Conn) {
	var n64 int64
	defer func() {
		c.Close()
		atomic.AddInt64(&echoed, n64)
		atomic.AddInt64(&open, -1)
	}()
	buf := make([]byte, bufSize)
	for {
		n, err := c.Read(buf)
		if n > 0 {
			if _, werr := c.Write(buf[:n]); werr != nil {
				return
			}
			n64 += int64(n)
		}
		if err != nil {
			return // io.EOF: the peer closed; anything else: reset, shut down
		}
	}
}

func main() {
	addr := flag.String("addr", "127.0.0.1:8080", "address to listen on")
	reuseport := flag.Bool("reuseport", false, "set SO_REUSEPORT: several servers share the address")
	flag.Parse()

	lc := net.ListenConfig{}
	if *reuseport {
		lc.Control = func(network, address string, rc syscall.RawConn) error {
			var serr error
			if err := rc.Control(func(fd uintptr) {
				serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, soReuseport, 1)
			}); err != nil {
				return err
			}
			return serr
		}
	}
	ln, err := lc.Listen(context.Background(), "tcp", *addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "echo:", err)
		os.Exit(1)
	}
	fmt.Printf("listening on %s (go %s, pid %d, GOMAXPROCS %d)\n",
		ln.Addr(), runtime.Version(), os.Getpid(), runtime.GOMAXPROCS(0))

	done := make(chan struct{})
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		<-sigs
		close(done)
		ln.Close()
	}()

	for {
		c, err := ln.Accept()
		if err != nil {
			select {
			case <-done:
			default:
				if ne, ok := err.(net.Error); ok && ne.Timeout() {
					continue
				}
				// EMFILE and friends: back off as net/http does (5 ms doubling to 1 s
				// would be the full version; one pause is enough for a benchmark).
				time.Sleep(5 * time.Millisecond)
				continue
			}
			break
		}
		atomic.AddInt64(&accepted, 1)
		atomic.AddInt64(&open, 1)
		go handle(c)
	}

	deadline := time.Now().Add(time.Second)
	for atomic.LoadInt64(&open) > 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	t := totals{Event: "totals", Accepted: atomic.LoadInt64(&accepted),
		Open: atomic.LoadInt64(&open), BytesEchoed: atomic.LoadInt64(&echoed)}
	line, _ := json.Marshal(t)
	fmt.Println(string(line))
}

// Command churn is the Go peer of `tcplab bomb --mode fresh`: connection churn
// against an echo server, in the style of the Go lab's cmd/bomb.
//
// -workers goroutines each loop: net.Dial("tcp", addr), write a 16-byte
// payload, read the 16-byte echo (io.ReadFull), Close; until -count
// connections have been attempted or -duration has passed. The client closes
// first, so its side of every connection ends in TIME_WAIT, as with the bomb.
// It prints one JSON line:
//
//	{"attempted":N,"ok":N,"failed":N,"conns_per_s":X,"elapsed_s":X,"workers":N,"first_error":S}
//
// conns_per_s is ok / elapsed_s; elapsed_s runs from just before the first
// goroutine starts to just after the last one ends (process start-up is not
// in it). first_error is null when every connection succeeded.
//
// Build and run (bench/bomb_vs_go.py does both, in a private network namespace):
//
//	go build -o /tmp/churn . && /tmp/churn -addr 127.0.0.1:8080 -count 20000 -workers 32
package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// The same 16 bytes as tcplab's bomb sends.
var payload = []byte("tcplab port bomb")

type result struct {
	Attempted  int64   `json:"attempted"`
	OK         int64   `json:"ok"`
	Failed     int64   `json:"failed"`
	ConnsPerS  float64 `json:"conns_per_s"`
	ElapsedS   float64 `json:"elapsed_s"`
	Workers    int     `json:"workers"`
	FirstError *string `json:"first_error"`
}

func main() {
	addr := flag.String("addr", "127.0.0.1:8080", "echo server address")
	count := flag.Int64("count", 30000, "stop after this many connections (attempts)")
	duration := flag.Duration("duration", 30*time.Second, "stop after this long")
	workers := flag.Int("workers", 32, "goroutines, each with one connection in flight")
	flag.Parse()
	if *count < 1 || *workers < 1 || *duration <= 0 {
		fmt.Fprintln(os.Stderr, "churn: -count and -workers must be at least 1, -duration positive")
		os.Exit(2)
	}

	var claimed, ok, failed int64
	var firstOnce sync.Once
	var first *string
	fail := func(err error) {
		atomic.AddInt64(&failed, 1)
		firstOnce.Do(func() { s := err.Error(); first = &s })
	}

	start := time.Now()
	deadline := start.Add(*duration)
	var wg sync.WaitGroup
	for w := 0; w < *workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, len(payload))
			for {
				if atomic.AddInt64(&claimed, 1) > *count || !time.Now().Before(deadline) {
					return
				}
				conn, err := net.Dial("tcp", *addr)
				if err != nil {
					fail(err)
					continue
				}
				if _, err = conn.Write(payload); err != nil {
					conn.Close()
					fail(err)
					continue
				}
				if _, err = io.ReadFull(conn, buf); err != nil {
					conn.Close()
					fail(err)
					continue
				}
				conn.Close()
				if !bytes.Equal(buf, payload) {
					fail(fmt.Errorf("echo differs: %q", buf))
					continue
				}
				atomic.AddInt64(&ok, 1)
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start).Seconds()

	attempted := ok + failed
	r := result{Attempted: attempted, OK: ok, Failed: failed, ElapsedS: elapsed,
		Workers: *workers, FirstError: first}
	if elapsed > 0 {
		r.ConnsPerS = float64(ok) / elapsed
	}
	line, _ := json.Marshal(r)
	fmt.Println(string(line))
}

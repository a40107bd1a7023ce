package acicache

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

type floorConn struct {
	c       net.Conn
	w       *bufio.Writer
	replies chan struct{}
	// pause: after a read that left nothing buffered, sleep 5 ms before reading again (as a
	// subscriber that hears only its own messages may), so the kernel batches them.
	pause bool
}

func floorDial(addr string, resp3 bool, pause ...bool) *floorConn {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		panic(err)
	}
	k := &floorConn{c: c, w: bufio.NewWriter(c), replies: make(chan struct{}, 16), pause: len(pause) > 0 && pause[0]}
	go k.read()
	if resp3 {
		k.send("HELLO", "3")
		k.flush()
		<-k.replies
	}
	return k
}

func (k *floorConn) send(args ...string) {
	fmt.Fprintf(k.w, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(k.w, "$%d\r\n%s\r\n", len(a), a)
	}
}

func (k *floorConn) flush() { k.w.Flush() }

// read parses frames and hands each reply to the waiting writer.
func (k *floorConn) read() {
	r := bufio.NewReaderSize(k.c, 64<<10)
	for {
		t, err := floorSkip(r)
		if err != nil {
			return
		}
		if t != '>' { // a push (a message, a subscribe confirmation) is dropped
			k.replies <- struct{}{}
		} else if k.pause && r.Buffered() == 0 {
			time.Sleep(5 * time.Millisecond)
		}
	}
}

// skip consumes one frame and returns its type byte.
func floorSkip(r *bufio.Reader) (byte, error) {
	line, err := r.ReadSlice('\n')
	if err != nil {
		return 0, err
	}
	t := line[0]
	n, _ := strconv.Atoi(string(line[1 : len(line)-2]))
	switch t {
	case '*', '>', '~':
		for i := 0; i < n; i++ {
			if _, err := floorSkip(r); err != nil {
				return 0, err
			}
		}
	case '%':
		for i := 0; i < 2*n; i++ {
			if _, err := floorSkip(r); err != nil {
				return 0, err
			}
		}
	case '$', '=', '!':
		if n >= 0 {
			if _, err := r.Discard(n + 2); err != nil {
				return 0, err
			}
		}
	}
	return t, nil
}

// BenchmarkEagerFloors: where the floor of an eager write goes in Go, and what the writer's own
// subscription on its command connection (RESP3 carries pushes and replies on one connection)
// would save. Not a benchmark of the cache: every row is a bare client, timed in interleaved
// chunks (rotating order, medians) against go-redis's SET measured next to it.
// `go test -run XXX -bench EagerFloors -benchtime 1x ./acicache`
//
// Rows "raw" use a minimal RESP3 connection (a reader goroutine hands replies over a channel,
// which costs ~10% of a SET by itself: compare "raw SET" with go-redis's).
func BenchmarkEagerFloors(b *testing.B) {
	for b.Loop() {
	}
	addr := redisAddr
	msg := `{"action":"invalidate","keys":["be:k12"],"strategy":"eager","timestamp":1700000000.123456,"source":"0123456789ab","epoch":"0123456789abcdef","seq":1,"v":2}`
	val := string(make([]byte, 100))
	plain := floorDial(addr, true)
	// today's design: the writer's subscription on a second connection, read by its own goroutine
	sub := floorDial(addr, true)
	sub.send("SUBSCRIBE", "two")
	sub.flush()
	paused := floorDial(addr, true, true)
	paused.send("SUBSCRIBE", "paused")
	paused.flush()
	two := floorDial(addr, true)
	one := floorDial(addr, true)
	one.send("SUBSCRIBE", "one")
	one.flush()
	time.Sleep(100 * time.Millisecond)
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	ctx := context.Background()
	ps := rdb.Subscribe(ctx, "gr")
	ps.Receive(ctx)
	defer ps.Close()
	go func() {
		for range ps.Channel() {
		}
	}()
	own := newOwnWriter(rdb)
	defer own.close()
	key := func(i int) string { return "k" + strconv.Itoa(i%100) }
	goRedisSetPublish := func(ch string) func(int) {
		return func(i int) {
			pipe := rdb.Pipeline()
			pipe.Set(ctx, key(i), val, 10*time.Second)
			pipe.Publish(ctx, ch, msg)
			pipe.Exec(ctx)
		}
	}
	rawSetPublish := func(c *floorConn, ch string) func(int) {
		return func(i int) {
			c.send("SET", key(i), val, "PX", "10000")
			c.send("PUBLISH", ch, msg)
			c.flush()
			<-c.replies
			<-c.replies
		}
	}
	ops := []struct {
		name string
		op   func(i int)
	}{
		{"go-redis SET", func(i int) { rdb.Set(ctx, key(i), val, 10*time.Second) }},
		{"go-redis SET+PUBLISH, lean subscriber", goRedisSetPublish("two")},
		{"go-redis SET+PUBLISH, go-redis subscriber", goRedisSetPublish("gr")},
		{"go-redis SET+PUBLISH, lean sub pausing 5ms", goRedisSetPublish("paused")},
		{"own conn SET+PUBLISH, lean sub pausing 5ms", func(i int) {
			// how the cache writes under eager on a standalone client (wconn.go)
			cn, reused, _ := own.get(ctx)
			cn.buf = appendPublish(appendSetPX(cn.buf[:0], key(i), val, 10*time.Second), "paused", []byte(msg))
			_, _ = own.do(ctx, cn, reused, 2)
		}},
		{"raw SET", func(i int) {
			plain.send("SET", key(i), val, "PX", "10000")
			plain.flush()
			<-plain.replies
		}},
		{"raw SET+PUBLISH, nobody subscribed", rawSetPublish(plain, "none")},
		{"raw SET+PUBLISH, subscriber on 2nd conn", rawSetPublish(two, "two")},
		{"raw SET+PUBLISH, subscribed on own conn", rawSetPublish(one, "one")},
	}
	samples := make([][]float64, len(ops))
	per := 300
	for round := 0; round < 40; round++ {
		for j := range ops {
			o := ops[(j+round)%len(ops)]
			t0 := time.Now()
			for i := 0; i < per; i++ {
				o.op(i)
			}
			samples[(j+round)%len(ops)] = append(samples[(j+round)%len(ops)], float64(time.Since(t0).Nanoseconds())/float64(per))
		}
	}
	for j, o := range ops {
		// The median of per-round ratios: load that comes and goes hits both sides of a round.
		ratios := make([]float64, len(samples[j]))
		for r := range samples[j] {
			ratios[r] = samples[j][r] / samples[0][r]
		}
		fmt.Printf("%-45s %8.0f ns  %.2fx go-redis SET\n", o.name, median(append([]float64(nil), samples[j]...)), median(ratios))
	}
	for _, k := range []*floorConn{plain, sub, paused, two, one} {
		_ = k.c.Close()
	}
}

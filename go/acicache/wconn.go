package acicache

import (
	"bufio"
	"context"
	"errors"
	"net"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// ownWriter sends the eager writes of a standalone *redis.Client (SET or DEL, and the
// invalidation's PUBLISH, in one write) on connections of our own instead of a go-redis
// pipeline. Measured on 2 vCPUs (README), a go-redis pipeline of SET+PUBLISH costs ~1.3x a
// go-redis SET, the same two commands written and read here ~1.1x: go-redis spends per call a
// health-check syscall (a non-blocking MSG_PEEK recvfrom on every connection taken from its
// pool), allocations for the pipeline and each command, and its hooks.
//
// Rules, as go-redis's own connections: a connection is held by one call at a time (a pool of
// idle ones, at most the client's PoolSize open; over that, the write takes go-redis's
// pipeline); every read and write has the client's ReadTimeout/WriteTimeout, and the caller's
// context deadline if earlier; a context that ends while a call waits cuts it short; after
// any error, a timeout or a cancellation the connection is closed, never reused. A reused idle
// connection that fails with a network error before answering (the server closed it: a
// restart, its idle timeout) is replaced by a fresh one and the call sent once more, as
// go-redis retries (SET and PUBLISH twice are harmless: same value, same seq). A failed dial
// sends this write, and those of the next second, through go-redis.
//
// It is used only where go-redis's own behaviour cannot be missed: no hooks (AddHook, checked
// on every write: tracing and test hooks keep seeing the writes), no OnConnect, no streaming
// credentials, no limiter, no client-side caching, not a failover client (leanOptions and
// newOwnWriter).
type ownWriter struct {
	opt   *redis.Options
	hooks func() int
	max   int

	mu     sync.Mutex
	idle   []*ownConn
	open   int
	closed bool

	downUntil atomic.Int64 // unix ns: after a failed dial, go-redis carries the writes until then
	dials     atomic.Uint64
	writes    atomic.Uint64
}

type ownConn struct {
	nc       net.Conn
	r        *bufio.Reader
	buf      []byte // the commands of one call
	msg      []byte // scratch for the invalidation message
	lastUsed int64  // unix ns

	readDeadline, writeDeadline time.Time // in place on the socket (zero: none)
}

// newOwnWriter returns nil when the client's writes must stay with go-redis.
func newOwnWriter(rdb redis.UniversalClient) *ownWriter {
	opt, ok := leanOptions(rdb)
	if !ok || opt.Limiter != nil || opt.ClientSideCache != nil || opt.ClientSideCacheConfig != nil {
		return nil
	}
	hooks := hookCounter(rdb.(*redis.Client))
	if hooks == nil {
		return nil
	}
	return &ownWriter{opt: opt, hooks: hooks, max: max(opt.PoolSize, 1)}
}

// hooksState mirrors the head of go-redis's hooksState (checked by hookCounter).
type hooksState struct{ slice []redis.Hook }

// hookCounter returns a function that reports how many hooks cl has (AddHook), read the way
// go-redis reads them (an atomic load), or nil when this go-redis does not keep them as the
// version this was written against (v9.23) does: then the writes stay with go-redis.
func hookCounter(cl *redis.Client) func() int {
	v := reflect.ValueOf(cl).Elem()
	bc := v.FieldByName("baseClient")
	if !bc.IsValid() || bc.Kind() != reflect.Pointer || bc.IsNil() {
		return nil
	}
	hm := bc.Elem().FieldByName("hooksMixin")
	if !hm.IsValid() || hm.Kind() != reflect.Struct {
		return nil
	}
	st := hm.FieldByName("state")
	if !st.IsValid() || st.Kind() != reflect.Pointer || st.IsNil() {
		return nil
	}
	ap := st.Type().Elem() // atomic.Pointer[hooksState]
	if ap.PkgPath() != "sync/atomic" || !strings.HasPrefix(ap.Name(), "Pointer[") || ap.NumField() == 0 {
		return nil
	}
	f0 := ap.Field(0).Type // _ [0]*T
	if f0.Kind() != reflect.Array || f0.Elem().Kind() != reflect.Pointer {
		return nil
	}
	hs := f0.Elem().Elem()
	if hs.Kind() != reflect.Struct || hs.NumField() == 0 {
		return nil
	}
	if sf := hs.Field(0); sf.Name != "slice" || sf.Offset != 0 || sf.Type != reflect.TypeFor[[]redis.Hook]() {
		return nil
	}
	p := (*atomic.Pointer[hooksState])(st.UnsafePointer())
	return func() int {
		s := p.Load()
		if s == nil {
			return 1
		}
		return len(s.slice)
	}
}

// get returns a connection for one call (reused: it was idle), or nil when the write goes
// through go-redis (hooks installed, every connection busy, dialing failed recently).
func (w *ownWriter) get(ctx context.Context) (cn *ownConn, reused bool, err error) {
	if w.hooks() != 0 {
		return nil, false, nil
	}
	now := time.Now().UnixNano()
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		return nil, false, nil
	}
	for n := len(w.idle); n > 0; n = len(w.idle) {
		cn = w.idle[n-1]
		w.idle = w.idle[:n-1]
		if w.opt.ConnMaxIdleTime > 0 && now-cn.lastUsed >= int64(w.opt.ConnMaxIdleTime) {
			w.open--
			_ = cn.nc.Close()
			continue
		}
		w.mu.Unlock()
		return cn, true, nil
	}
	if w.open >= w.max || now < w.downUntil.Load() {
		w.mu.Unlock()
		return nil, false, nil
	}
	w.open++
	w.mu.Unlock()
	cn, err = w.dial(ctx)
	if err != nil {
		w.mu.Lock()
		w.open--
		w.mu.Unlock()
		w.downUntil.Store(time.Now().Add(time.Second).UnixNano())
		return nil, false, err
	}
	return cn, false, nil
}

// put returns a healthy connection to the idle list, or closes it.
func (w *ownWriter) put(cn *ownConn, healthy bool) {
	if cap(cn.buf) > 64<<10 || cap(cn.msg) > 64<<10 {
		cn.buf, cn.msg = nil, nil // a large value's buffers are not kept
	}
	cn.lastUsed = time.Now().UnixNano()
	w.mu.Lock()
	if !healthy || w.closed {
		w.open--
		w.mu.Unlock()
		_ = cn.nc.Close()
		return
	}
	w.idle = append(w.idle, cn)
	w.mu.Unlock()
}

func (w *ownWriter) close() {
	w.mu.Lock()
	w.closed = true
	idle := w.idle
	w.idle = nil
	w.open -= len(idle)
	w.mu.Unlock()
	for _, cn := range idle {
		_ = cn.nc.Close()
	}
}

// dial connects with the client's dialer and sends the handshake go-redis would (AUTH,
// CLIENT SETNAME, SELECT), answered before the connection is used. RESP2: the replies needed
// are +OK and integers.
func (w *ownWriter) dial(ctx context.Context) (*ownConn, error) {
	opt := w.opt
	dctx, cancel := dialContext(ctx, opt)
	defer cancel()
	nc, user, pass, err := dialClient(dctx, opt)
	if err != nil {
		return nil, err
	}
	w.dials.Add(1)
	cn := &ownConn{nc: nc, r: bufio.NewReaderSize(nc, 4096)}
	n := 0
	if pass != "" {
		if user != "" {
			cn.buf = appendCommand(cn.buf, "AUTH", user, pass)
		} else {
			cn.buf = appendCommand(cn.buf, "AUTH", pass)
		}
		n++
	}
	if opt.ClientName != "" {
		cn.buf = appendCommand(cn.buf, "CLIENT", "SETNAME", opt.ClientName)
		n++
	}
	if opt.DB != 0 {
		cn.buf = appendCommand(cn.buf, "SELECT", strconv.Itoa(opt.DB))
		n++
	}
	if n > 0 {
		dl, _ := dctx.Deadline()
		_ = nc.SetDeadline(dl)
		_, err := cn.roundTrip(n)
		_ = nc.SetDeadline(time.Time{})
		if err != nil {
			_ = nc.Close()
			return nil, err
		}
	}
	return cn, nil
}

// do sends cn.buf (n commands) and reads the n replies; it returns the first reply's integer
// (DEL's count) and releases cn: to the idle list, or closed after any error.
func (w *ownWriter) do(ctx context.Context, cn *ownConn, reused bool, n int) (int64, error) {
	for {
		first, healthy, err := w.once(ctx, cn, n)
		w.put(cn, healthy)
		if err == nil {
			w.writes.Add(1)
			return first, nil
		}
		if !reused || !retryable(err) || ctx.Err() != nil {
			return 0, err
		}
		// The server closed an idle connection: once more on a fresh one.
		fresh := w.fresh(ctx)
		if fresh == nil {
			return 0, err
		}
		fresh.buf, cn.buf = cn.buf, fresh.buf
		cn, reused = fresh, false
	}
}

// fresh dials a connection whatever the idle list holds (a retry); nil if that fails.
func (w *ownWriter) fresh(ctx context.Context) *ownConn {
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		return nil
	}
	w.open++
	w.mu.Unlock()
	cn, err := w.dial(ctx)
	if err != nil {
		w.mu.Lock()
		w.open--
		w.mu.Unlock()
		return nil
	}
	return cn
}

// once makes one exchange; healthy: the connection may be used again.
func (w *ownWriter) once(ctx context.Context, cn *ownConn, n int) (first int64, healthy bool, err error) {
	if err := ctx.Err(); err != nil {
		return 0, true, err
	}
	var stop func() bool
	if ctx.Done() != nil {
		// A context that ends without a deadline (cancel) cuts a blocked read or write short.
		stop = context.AfterFunc(ctx, func() { _ = cn.nc.SetDeadline(time.Unix(1, 0)) })
	}
	first, err = w.exchange(ctx, cn, n)
	healthy = err == nil
	if stop != nil && !stop() {
		healthy = false // its deadline was moved under the call
	}
	if err != nil {
		var ne net.Error
		if cerr := ctx.Err(); cerr != nil {
			err = cerr
		} else if d, ok := ctx.Deadline(); ok && errors.As(err, &ne) && ne.Timeout() && !time.Now().Before(d) {
			err = context.DeadlineExceeded // the socket's deadline was the context's, whose timer lags
		}
	}
	return first, healthy, err
}

// exchange writes cn.buf and reads n replies. Each deadline is set before ctx is checked: a
// context that ends after the check moves the deadline (once's AfterFunc) after ours.
func (w *ownWriter) exchange(ctx context.Context, cn *ownConn, n int) (int64, error) {
	if err := cn.setDeadline(ctx, w.opt.WriteTimeout, cn.nc.SetWriteDeadline, &cn.writeDeadline); err != nil {
		return 0, err
	}
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	if _, err := cn.nc.Write(cn.buf); err != nil {
		return 0, err
	}
	if err := cn.setDeadline(ctx, w.opt.ReadTimeout, cn.nc.SetReadDeadline, &cn.readDeadline); err != nil {
		return 0, err
	}
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	return cn.roundTripRead(n)
}

// setDeadline gives the call now + timeout (go-redis's normalised timeouts: > 0 a bound, else
// none), or the context's deadline if earlier; with neither, it clears one left by an earlier
// call. A deadline in place from an earlier call is kept while it still leaves this one at
// least 90% of its timeout (and never more than all of it): moving a socket's deadline costs a
// runtime timer update, which may wake the netpoller, on every write otherwise.
func (cn *ownConn) setDeadline(ctx context.Context, timeout time.Duration, set func(time.Time) error, cur *time.Time) error {
	d, exact := ctx.Deadline()
	if timeout <= 0 && !exact {
		if cur.IsZero() {
			return nil
		}
		*cur = time.Time{}
		return set(time.Time{})
	}
	now := time.Now()
	t := d
	if timeout > 0 && (!exact || now.Add(timeout).Before(d)) {
		t, exact = now.Add(timeout), false
	}
	if !exact && !cur.IsZero() && !cur.After(t) && !cur.Before(now.Add(timeout-timeout/10)) {
		return nil
	}
	*cur = t
	return set(t)
}

// retryable: the connection failed at the transport (closed by the server), not by a
// deadline or a Redis error.
func retryable(err error) bool {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return false
	}
	var re ownRedisError
	if errors.As(err, &re) || errors.Is(err, errProtocol) {
		return false
	}
	return true
}

// roundTrip writes cn.buf and reads n replies (no deadline of its own: the handshake's).
func (cn *ownConn) roundTrip(n int) (int64, error) {
	if _, err := cn.nc.Write(cn.buf); err != nil {
		return 0, err
	}
	cn.buf = cn.buf[:0]
	return cn.roundTripRead(n)
}

// roundTripRead reads n replies; the first error reply is returned (after reading them all,
// so that the connection would stay in step), and the first reply's integer.
func (cn *ownConn) roundTripRead(n int) (int64, error) {
	var first int64
	var rerr error
	for i := range n {
		v, err := readReply(cn.r)
		if err != nil {
			var re ownRedisError
			if !errors.As(err, &re) {
				return 0, err
			}
			if rerr == nil {
				rerr = err
			}
		}
		if i == 0 {
			first = v
		}
	}
	return first, rerr
}

// ownRedisError is an error reply (go-redis's redis.Error interface: redis.HasErrorPrefix
// works on it).
type ownRedisError string

func (e ownRedisError) Error() string { return string(e) }
func (ownRedisError) RedisError()     {}

// readReply consumes one reply and returns its integer value (for ':'), an ownRedisError for
// an error reply.
func readReply(r *bufio.Reader) (int64, error) {
	l, err := r.ReadSlice('\n')
	if err != nil {
		if errors.Is(err, bufio.ErrBufferFull) {
			return 0, errProtocol
		}
		return 0, err
	}
	if len(l) < 3 || l[len(l)-2] != '\r' {
		return 0, errProtocol
	}
	l = l[:len(l)-2]
	switch l[0] {
	case '+', '_', ',', '#', '(':
		return 0, nil
	case '-':
		return 0, ownRedisError(l[1:])
	case ':':
		v, err := parseLen(l[1:])
		return int64(v), err
	case '$', '=', '!':
		n, err := parseLen(l[1:])
		if err != nil || n < 0 {
			return 0, err
		}
		_, err = r.Discard(n + 2)
		return 0, err
	case '*', '~', '%', '>', '|':
		n, err := parseLen(l[1:])
		if err != nil {
			return 0, err
		}
		if l[0] == '%' || l[0] == '|' {
			n *= 2
		}
		for range max(n, 0) {
			if _, err := readReply(r); err != nil {
				var re ownRedisError
				if !errors.As(err, &re) {
					return 0, err
				}
			}
		}
		return 0, nil
	}
	return 0, errProtocol
}

// appendBulk appends one RESP bulk string.
func appendBulk(b []byte, s string) []byte {
	b = append(b, '$')
	b = strconv.AppendInt(b, int64(len(s)), 10)
	b = append(b, '\r', '\n')
	b = append(b, s...)
	return append(b, '\r', '\n')
}

func appendBulkBytes(b []byte, s []byte) []byte {
	b = append(b, '$')
	b = strconv.AppendInt(b, int64(len(s)), 10)
	b = append(b, '\r', '\n')
	b = append(b, s...)
	return append(b, '\r', '\n')
}

// appendSetPX appends SET key value PX ms (go-redis's Set with a TTL sends EX or PX: the same).
func appendSetPX(b []byte, key, value string, ttl time.Duration) []byte {
	ms := int64(ttl / time.Millisecond)
	if ms < 1 {
		ms = 1
	}
	b = append(b, "*5\r\n$3\r\nSET\r\n"...)
	b = appendBulk(b, key)
	b = appendBulk(b, value)
	b = append(b, "$2\r\nPX\r\n"...)
	var num [20]byte
	return appendBulkBytes(b, strconv.AppendInt(num[:0], ms, 10))
}

func appendDel(b []byte, key string) []byte {
	b = append(b, "*2\r\n$3\r\nDEL\r\n"...)
	return appendBulk(b, key)
}

func appendPublish(b []byte, channel string, msg []byte) []byte {
	b = append(b, "*3\r\n$7\r\nPUBLISH\r\n"...)
	b = appendBulk(b, channel)
	return appendBulkBytes(b, msg)
}

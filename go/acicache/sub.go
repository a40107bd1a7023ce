package acicache

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/redis/go-redis/v9"
)

// ownBatchDelay: after a read that left only our own messages handled and nothing buffered, the
// lean subscriber waits this long before reading again, so that the kernel gathers the next
// ones and the reader wakes once per batch of writes rather than once per write (an eager
// writer gets each of its invalidations back). Another instance's message may wait this long,
// far inside every staleness bound; the Python host does the same (python/src/aci_cache/_rawsub.py).
const ownBatchDelay = 5 * time.Millisecond

type eventKind uint8

const (
	evOther       eventKind = iota // a confirmation of something else, a pong, an OK
	evMessage                      // channel + payload
	evSubscribe                    // a subscribe confirmation
	evUnsubscribe                  // an unsubscribe confirmation
	evTooLarge                     // a message whose payload (size bytes) was over maxPayload: skipped unread
)

// event is one push read from the subscription. channel and payload are valid until the next
// call to next: handle copies what it keeps.
type event struct {
	kind             eventKind
	channel, payload []byte
	size             int
}

// subscriber is the subscription connection receive reads: our own lean one for a standalone
// *redis.Client, go-redis's PubSub for any other client (cluster, ring, failover).
type subscriber interface {
	// next returns the next push. It fails once livenessTimeout passes without a byte, the
	// connection ends or the server answers an error.
	next(ctx context.Context) (event, error)
	// subscribe and unsubscribe send the command; the confirmation is read by next.
	subscribe(ctx context.Context, ch string) error
	unsubscribe(ctx context.Context, ch string) error
	// handledOwn is called after a message of our own was handled.
	handledOwn(ctx context.Context)
	close() error
}

// openSubscriber subscribes to chans on a new connection: a lean one when the client is a
// standalone *redis.Client, else through go-redis. The confirmations are read by next.
func (c *Cache) openSubscriber(chans []string) (subscriber, error) {
	if opt, ok := leanOptions(c.rdb); ok {
		return dialLean(c.ctx, opt, c.s.livenessTimeout, chans)
	}
	if c.cluster != nil {
		return c.openClusterSubscriber(chans)
	}
	return &goRedisSub{ps: c.rdb.Subscribe(c.ctx, chans...), timeout: c.s.livenessTimeout}, nil
}

// leanOptions returns the client's options when our own subscriber can stand in for go-redis's:
// a standalone *redis.Client (not a failover client, whose master moves, nor a cluster or a
// ring), without OnConnect (user code that only go-redis can run on a connection) or streaming
// credentials (re-authentication while connected).
func leanOptions(rdb redis.UniversalClient) (*redis.Options, bool) {
	cl, ok := rdb.(*redis.Client)
	if !ok {
		return nil, false
	}
	opt := cl.Options()
	if opt == nil || opt.Dialer == nil || opt.Addr == "FailoverClient" || opt.OnConnect != nil ||
		opt.StreamingCredentialsProvider != nil {
		return nil, false
	}
	return opt, true
}

// goRedisSub is go-redis's PubSub, as before the lean subscriber (it wakes and allocates per
// message).
type goRedisSub struct {
	ps      *redis.PubSub
	timeout time.Duration
	sharded bool // SSUBSCRIBE/SUNSUBSCRIBE (a cluster in sharded mode)
	// leaving: channels we asked to leave, whose unsubscribe confirmation is expected. Any other
	// unsubscribe push is the server ending the subscription (docs/WIRE.md 10.3).
	mu      sync.Mutex
	leaving map[string]int
}

// bytesOf views s as bytes without a copy: handle only reads them.
func bytesOf(s string) []byte { return unsafe.Slice(unsafe.StringData(s), len(s)) }

func (g *goRedisSub) next(ctx context.Context) (event, error) {
	msg, err := g.ps.ReceiveTimeout(ctx, g.timeout)
	if err != nil {
		return event{}, err
	}
	switch m := msg.(type) {
	case *redis.Message:
		return event{kind: evMessage, channel: bytesOf(m.Channel), payload: bytesOf(m.Payload)}, nil
	case *redis.Subscription:
		switch m.Kind {
		case "subscribe", "ssubscribe":
			return event{kind: evSubscribe}, nil
		case "unsubscribe", "sunsubscribe":
			g.mu.Lock()
			asked := g.leaving[m.Channel] > 0
			if asked {
				g.leaving[m.Channel]--
			}
			g.mu.Unlock()
			if !asked {
				return event{}, errSubscriptionEnded
			}
			return event{kind: evUnsubscribe}, nil
		}
	}
	return event{}, nil
}

func (g *goRedisSub) subscribe(ctx context.Context, ch string) error {
	if g.sharded {
		return g.ps.SSubscribe(ctx, ch)
	}
	return g.ps.Subscribe(ctx, ch)
}

func (g *goRedisSub) unsubscribe(ctx context.Context, ch string) error {
	g.mu.Lock()
	if g.leaving == nil {
		g.leaving = map[string]int{}
	}
	g.leaving[ch]++
	g.mu.Unlock()
	if g.sharded {
		return g.ps.SUnsubscribe(ctx, ch)
	}
	return g.ps.Unsubscribe(ctx, ch)
}

func (g *goRedisSub) handledOwn(context.Context) {}

func (g *goRedisSub) close() error { return g.ps.Close() }

// leanSub is a subscription connection of our own (RESP2): pushes are parsed from one
// bufio.Reader by the goroutine that handles them, a message costs no allocation (the payload is
// a slice of the read buffer), and reading pauses after our own messages (ownBatchDelay).
// Commands (SUBSCRIBE/UNSUBSCRIBE of the reports channel) are written under wmu by any
// goroutine; their confirmations arrive on the read side.
type leanSub struct {
	conn *countingConn
	r    *bufio.Reader
	wmu  sync.Mutex
	// stop undoes the AfterFunc that closes the connection when the cache's context ends (a
	// blocked read returns at once on Close).
	stop    func() bool
	chanBuf []byte // the current message's channel (the payload stays in the reader's buffer)
	pause   *time.Timer
	timeout time.Duration
}

// countingConn sets the read deadline (the liveness timeout: no byte for that long) before each
// read from the socket, and counts those reads: each one is a wake-up of the reader when it
// has to wait.
type countingConn struct {
	net.Conn
	timeout time.Duration
	reads   atomic.Uint64
}

func (c *countingConn) Read(p []byte) (int, error) {
	c.reads.Add(1)
	if err := c.Conn.SetReadDeadline(time.Now().Add(c.timeout)); err != nil {
		return 0, err
	}
	return c.Conn.Read(p)
}

const leanReadBuffer = 64 << 10

// dialContext is ctx bounded by the client's DialTimeout, for a dial and its handshake.
func dialContext(ctx context.Context, opt *redis.Options) (context.Context, context.CancelFunc) {
	if opt.DialTimeout > 0 {
		return context.WithTimeout(ctx, opt.DialTimeout)
	}
	return ctx, func() {}
}

// dialClient connects as the client's own connections do: its Dialer (TLS, unix sockets and
// custom dialers included), and the credentials it would AUTH with (a provider's, else
// Username/Password; an empty pass: no AUTH). dctx is from dialContext.
func dialClient(dctx context.Context, opt *redis.Options) (nc net.Conn, user, pass string, err error) {
	switch {
	case opt.CredentialsProviderContext != nil:
		if user, pass, err = opt.CredentialsProviderContext(dctx); err != nil {
			return nil, "", "", fmt.Errorf("failed to resolve credentials: %w", err)
		}
	case opt.CredentialsProvider != nil:
		user, pass = opt.CredentialsProvider()
	default:
		user, pass = opt.Username, opt.Password
	}
	nc, err = opt.Dialer(dctx, opt.Network, opt.Addr)
	return nc, user, pass, err
}

// dialLean connects with the client's own dialer (TLS, unix sockets and custom dialers included),
// and writes the handshake (AUTH as go-redis does, CLIENT SETNAME when the client sets a name)
// and the SUBSCRIBE in one write; the replies are read by next (an AUTH refusal is its error).
func dialLean(ctx context.Context, opt *redis.Options, timeout time.Duration, chans []string) (*leanSub, error) {
	dctx, cancel := dialContext(ctx, opt)
	defer cancel()
	nc, user, pass, err := dialClient(dctx, opt)
	if err != nil {
		return nil, err
	}
	s := &leanSub{conn: &countingConn{Conn: nc, timeout: timeout}, timeout: timeout}
	s.r = bufio.NewReaderSize(s.conn, leanReadBuffer)
	s.stop = context.AfterFunc(ctx, func() { _ = nc.Close() })
	var cmd []byte
	if pass != "" {
		if user != "" {
			cmd = appendCommand(cmd, "AUTH", user, pass)
		} else {
			cmd = appendCommand(cmd, "AUTH", pass)
		}
	}
	if opt.ClientName != "" {
		cmd = appendCommand(cmd, "CLIENT", "SETNAME", opt.ClientName)
	}
	cmd = appendCommand(cmd, append([]string{"SUBSCRIBE"}, chans...)...)
	if err := s.write(cmd); err != nil {
		_ = s.close()
		return nil, err
	}
	return s, nil
}

func appendCommand(b []byte, args ...string) []byte {
	b = append(b, '*')
	b = strconv.AppendInt(b, int64(len(args)), 10)
	b = append(b, '\r', '\n')
	for _, a := range args {
		b = append(b, '$')
		b = strconv.AppendInt(b, int64(len(a)), 10)
		b = append(b, '\r', '\n')
		b = append(b, a...)
		b = append(b, '\r', '\n')
	}
	return b
}

func (s *leanSub) write(cmd []byte) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if err := s.conn.SetWriteDeadline(time.Now().Add(s.timeout)); err != nil {
		return err
	}
	_, err := s.conn.Write(cmd)
	return err
}

func (s *leanSub) subscribe(_ context.Context, ch string) error {
	return s.write(appendCommand(nil, "SUBSCRIBE", ch))
}

func (s *leanSub) unsubscribe(_ context.Context, ch string) error {
	return s.write(appendCommand(nil, "UNSUBSCRIBE", ch))
}

func (s *leanSub) close() error {
	s.stop()
	return s.conn.Close()
}

// handledOwn pauses when nothing is left to read (see ownBatchDelay); the cache's end cuts the
// pause short.
func (s *leanSub) handledOwn(ctx context.Context) {
	if s.r.Buffered() != 0 {
		return
	}
	if s.pause == nil {
		s.pause = time.NewTimer(ownBatchDelay)
	} else {
		s.pause.Reset(ownBatchDelay)
	}
	select {
	case <-ctx.Done():
		s.pause.Stop()
	case <-s.pause.C:
	}
}

// wakeups is how many times the reader went to the socket.
func (s *leanSub) wakeups() uint64 { return s.conn.reads.Load() }

// subError is an error reply on the subscription (an AUTH refused, a channel an ACL denies).
type subError string

func (e subError) Error() string { return "acicache: subscription: " + string(e) }

var errProtocol = errors.New("acicache: subscription: malformed RESP")

// line reads one CRLF-terminated line and returns it without the CRLF.
func (s *leanSub) line() ([]byte, error) {
	l, err := s.r.ReadSlice('\n')
	if err != nil {
		if errors.Is(err, bufio.ErrBufferFull) {
			return nil, errProtocol
		}
		return nil, err
	}
	if len(l) < 3 || l[len(l)-2] != '\r' {
		return nil, errProtocol
	}
	return l[:len(l)-2], nil
}

// parseLen parses a RESP length or integer (no allocation).
func parseLen(b []byte) (int, error) {
	neg := false
	if len(b) > 0 && b[0] == '-' {
		neg, b = true, b[1:]
	}
	if len(b) == 0 || len(b) > 18 {
		return 0, errProtocol
	}
	n := 0
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, errProtocol
		}
		n = n*10 + int(c-'0')
	}
	if neg {
		n = -n
	}
	return n, nil
}

// bulk reads a bulk string's body of n bytes (and its CRLF); the slice is valid until the next
// read. Longer than the buffer, it is read into a slice of its own.
func (s *leanSub) bulk(n int) ([]byte, error) {
	if n+2 <= s.r.Size() {
		b, err := s.r.Peek(n + 2)
		if err != nil {
			return nil, err
		}
		if b[n] != '\r' || b[n+1] != '\n' {
			return nil, errProtocol
		}
		_, _ = s.r.Discard(n + 2)
		return b[:n], nil
	}
	b := make([]byte, n+2)
	if _, err := io.ReadFull(s.r, b); err != nil {
		return nil, err
	}
	if b[n] != '\r' || b[n+1] != '\n' {
		return nil, errProtocol
	}
	return b[:n], nil
}

// bulkHeader reads the header of a bulk string and returns its length (-1: null).
func (s *leanSub) bulkHeader() (int, error) {
	l, err := s.line()
	if err != nil {
		return 0, err
	}
	if l[0] != '$' {
		return 0, errProtocol
	}
	return parseLen(l[1:])
}

// skip consumes one value whose header line is l.
func (s *leanSub) skip(l []byte) error {
	switch l[0] {
	case '+', ':', '_', ',', '#', '(':
		return nil
	case '-':
		return subError(l[1:])
	case '$', '=', '!':
		n, err := parseLen(l[1:])
		if err != nil || n < 0 {
			return err
		}
		_, err = s.r.Discard(n + 2)
		return err
	case '*', '>', '~', '%', '|':
		n, err := parseLen(l[1:])
		if err != nil {
			return err
		}
		if l[0] == '%' || l[0] == '|' {
			n *= 2
		}
		for range max(n, 0) {
			e, err := s.line()
			if err != nil {
				return err
			}
			if err := s.skip(e); err != nil {
				return err
			}
		}
		return nil
	}
	return errProtocol
}

func (s *leanSub) next(context.Context) (event, error) {
	l, err := s.line()
	if err != nil {
		return event{}, err
	}
	if l[0] != '*' && l[0] != '>' {
		// +OK of AUTH or CLIENT SETNAME; an error reply fails the subscription.
		return event{}, s.skip(l)
	}
	n, err := parseLen(l[1:])
	if err != nil || n < 1 {
		return event{}, err
	}
	kn, err := s.bulkHeader()
	if err != nil {
		return event{}, err
	}
	if kn < 0 || kn > 16 {
		return event{}, errProtocol
	}
	kb, err := s.bulk(kn)
	if err != nil {
		return event{}, err
	}
	var kind eventKind
	switch string(kb) {
	case "message":
		kind = evMessage
	case "subscribe":
		kind = evSubscribe
	case "unsubscribe":
		kind = evUnsubscribe
	}
	if kind != evMessage || n != 3 {
		for range n - 1 {
			e, err := s.line()
			if err != nil {
				return event{}, err
			}
			if err := s.skip(e); err != nil {
				return event{}, err
			}
		}
		return event{kind: kind}, nil
	}
	cn, err := s.bulkHeader()
	if err != nil {
		return event{}, err
	}
	if cn < 0 || cn > s.r.Size()-2 {
		return event{}, errProtocol
	}
	ch, err := s.bulk(cn)
	if err != nil {
		return event{}, err
	}
	// The channel is copied (no allocation once grown): reading the payload may move the buffer.
	s.chanBuf = append(s.chanBuf[:0], ch...)
	pn, err := s.bulkHeader()
	if err != nil {
		return event{}, err
	}
	if pn < 0 {
		return event{kind: evMessage, channel: s.chanBuf}, nil
	}
	if pn > maxPayload {
		if _, err := s.r.Discard(pn + 2); err != nil {
			return event{}, err
		}
		return event{kind: evTooLarge, channel: s.chanBuf, size: pn}, nil
	}
	p, err := s.bulk(pn)
	if err != nil {
		return event{}, err
	}
	return event{kind: evMessage, channel: s.chanBuf, payload: p}, nil
}

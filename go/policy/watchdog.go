package policy

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/tetratelabs/wazero/api"
)

// watchdog is the one goroutine per Module that bounds its engines' calls (see instrument.go).
// A call costs its engine two atomic adds (calls is odd while a call runs); no clock is read
// and no timer armed per call. Every period the watchdog looks at each engine: a call seen
// running (calls odd and unchanged) for at least limit is stopped by setting the engine's
// stop global, so a call is stopped between limit and limit + period after it began.
type watchdog struct {
	limit  time.Duration
	period time.Duration

	mu      sync.Mutex
	engines map[*watched]struct{}
	done    chan struct{}
	once    sync.Once
	stopped sync.WaitGroup
}

// watched is an engine's part of the watchdog's state.
type watched struct {
	calls  atomic.Uint64 // odd while a call runs
	killed atomic.Bool
	stop   api.MutableGlobal

	seen  uint64 // the watchdog's own bookkeeping
	since time.Time
}

func newWatchdog(limit time.Duration) *watchdog {
	w := &watchdog{limit: limit, period: min(max(limit/4, time.Millisecond), 10*time.Millisecond),
		engines: map[*watched]struct{}{}, done: make(chan struct{})}
	w.stopped.Add(1)
	go w.run()
	return w
}

func (w *watchdog) add(e *watched) {
	w.mu.Lock()
	w.engines[e] = struct{}{}
	w.mu.Unlock()
}

func (w *watchdog) remove(e *watched) {
	w.mu.Lock()
	delete(w.engines, e)
	w.mu.Unlock()
}

func (w *watchdog) close() {
	w.once.Do(func() { close(w.done) })
	w.stopped.Wait()
}

func (w *watchdog) run() {
	defer w.stopped.Done()
	t := time.NewTicker(w.period)
	defer t.Stop()
	for {
		select {
		case <-w.done:
			return
		case now := <-t.C:
			w.mu.Lock()
			for e := range w.engines {
				c := e.calls.Load()
				switch {
				case c%2 == 0:
					e.seen = c
				case c != e.seen:
					e.seen, e.since = c, now
				case now.Sub(e.since) >= w.limit && !e.killed.Load():
					e.killed.Store(true)
					e.stop.Set(1)
				}
			}
			w.mu.Unlock()
		}
	}
}

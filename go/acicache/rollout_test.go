package acicache

import (
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/aci-cache/aci-cache/go/policy"
)

// operator does in the tests what `aci policy push|rollback` does (docs/WIRE.md 9.7), with
// go-redis and crypto/ed25519: store the blob, write the record with the compare-and-set
// script of 9.2, which announces it.
type operator struct {
	t   *testing.T
	rdb redis.UniversalClient
	// channel is P:policy, {P}:policy on a cluster; sharded: the announcement also goes out by
	// SPUBLISH once the script returned 1 (docs/WIRE.md 10.1).
	channel string
	sharded bool
	ns      string
	k       string
	priv    ed25519.PrivateKey
	pub     string
}

func newOperator(t *testing.T, ns string) *operator {
	pub, priv, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	return &operator{t: t, rdb: newClient(t), channel: "aci:" + ns + ":policy", ns: ns, k: "aci::" + ns + ":", priv: priv,
		pub: hex.EncodeToString(pub)}
}

func readPolicy(t testing.TB, name string) ([]byte, string) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(policyDir(t), name+".wasm"))
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(b)
	return b, hex.EncodeToString(sum[:])
}

func (o *operator) sign(hash, config string) string {
	return hex.EncodeToString(ed25519.Sign(o.priv, signedMessage("aci", o.ns, hash, config)))
}

func (o *operator) current() map[string]string {
	f, err := o.rdb.HGetAll(bg, o.k+"policy:current").Result()
	if err != nil {
		o.t.Fatal(err)
	}
	return f
}

// write writes a record (rollout = the current one + 1) with the script of 9.2.
func (o *operator) write(fields map[string]string) uint64 {
	o.t.Helper()
	cur := o.current()
	expected := cur["rollout"]
	if expected == "" {
		expected = "0"
	}
	n, _ := strconv.ParseUint(expected, 10, 64)
	n++
	ann, _ := json.Marshal(map[string]any{"action": "policy", "rollout": n, "timestamp": unixSeconds(), "source": "cli-test", "v": 2})
	args := []any{expected, o.channel, string(ann), "rollout", strconv.FormatUint(n, 10)}
	for _, k := range []string{"sha256", "config", "sig", "previous", "previous_config", "previous_sig", "canary", "name", "version", "by", "reason"} {
		args = append(args, k, fields[k])
	}
	args = append(args, "at", strconv.FormatFloat(unixSeconds(), 'f', 3, 64))
	done, err := o.rdb.Eval(bg, casLua, []string{o.k + "policy:current"}, args...).Int64()
	if err != nil || done != 1 {
		o.t.Fatalf("writing the record: %v, %v", done, err)
	}
	if o.sharded {
		if err := o.rdb.SPublish(bg, o.channel, ann).Err(); err != nil {
			o.t.Fatal(err)
		}
	}
	return n
}

// push stores wasm and points the record at it; previous is what the fleet outside the
// canary runs now.
func (o *operator) push(wasm []byte, config string, signed bool, canary ...string) (uint64, string) {
	o.t.Helper()
	sum := sha256.Sum256(wasm)
	hash := hex.EncodeToString(sum[:])
	if err := o.rdb.SetNX(bg, o.k+"policy:blob:"+hash, wasm, 0).Err(); err != nil {
		o.t.Fatal(err)
	}
	o.rdb.HDel(bg, o.k+"policy:bad", hash)
	cur := o.current()
	prev := [3]string{cur["sha256"], cur["config"], cur["sig"]}
	if cur["canary"] != "" {
		prev = [3]string{cur["previous"], cur["previous_config"], cur["previous_sig"]}
	}
	sig := ""
	if signed {
		sig = o.sign(hash, config)
	}
	n := o.write(map[string]string{"sha256": hash, "config": config, "sig": sig,
		"previous": prev[0], "previous_config": prev[1], "previous_sig": prev[2],
		"canary": strings.Join(canary, ","), "by": "cli@test", "reason": "push"})
	return n, hash
}

// rollback is `aci policy rollback`: back to the record's previous target.
func (o *operator) rollback() uint64 {
	cur := o.current()
	return o.write(map[string]string{"sha256": cur["previous"], "config": cur["previous_config"], "sig": cur["previous_sig"],
		"previous": cur["sha256"], "previous_config": cur["config"], "previous_sig": cur["sig"], "by": "cli@test", "reason": "rollback"})
}

func (o *operator) status(id string) map[string]any {
	v, err := o.rdb.Get(bg, o.k+"policy:status:"+id).Result()
	if err != nil {
		return nil
	}
	var m map[string]any
	if json.Unmarshal([]byte(v), &m) != nil {
		o.t.Fatalf("status record of %s is not JSON: %q", id, v)
	}
	return m
}

func rejectedReason(st map[string]any) string {
	r, _ := st["rejected"].(map[string]any)
	s, _ := r["reason"].(string)
	return s
}

// runs: the cache runs the component hash (pushed or not) and says so in its status record.
func runs(o *operator, c *Cache, hash, origin string) bool {
	s := c.Stats()
	st := o.status(c.InstanceID())
	return s.PolicySHA256 == hash && s.PolicyOrigin == origin && st != nil && st["sha256"] == hash &&
		st["origin"] == origin && st["host"] == "go"
}

// TestRolloutSignedPush: a signed push of fixed with {"initial-strategy":"eager"} makes two Go
// caches run it within 2 s and say so in their status records; a rollback returns them to
// their local policy; an unsigned push, a push of a missing blob and a bad config override are
// refused, the reason in the status record.
func TestRolloutSignedPush(t *testing.T) {
	space := ns(t)
	o := newOperator(t, space)
	opts := []Option{WithNamespace(space), WithPolicyPublicKey(o.pub), WithTick(100 * time.Millisecond)}
	a := newCache(t, append(opts, WithInstanceID("a"+space))...)
	b := newCache(t, append(opts, WithInstanceID("b"+space))...)
	local := a.Stats().PolicySHA256
	_, adaptiveHash := readPolicy(t, "adaptive")
	if local != adaptiveHash || a.Stats().Policy != "adaptive" || a.Stats().PolicyOrigin != "local" {
		t.Fatalf("local policy: %+v", a.Stats())
	}
	eventually(t, 2*time.Second, "status records", func() bool { return runs(o, a, local, "local") && runs(o, b, local, "local") })
	if st := o.status(a.InstanceID()); st["trust"] != "key" || st["rollout"] != float64(0) || st["rejected"] != nil {
		t.Fatalf("status %v", st)
	}

	wasm, fixed := readPolicy(t, "fixed")
	pushed := time.Now()
	n, _ := o.push(wasm, `{"initial-strategy":"eager"}`, true)
	eventually(t, 2*time.Second, "both caches run the pushed fixed policy, eager", func() bool {
		return runs(o, a, fixed, "pushed") && runs(o, b, fixed, "pushed") &&
			a.Strategy() == policy.StrategyEager && b.Strategy() == policy.StrategyEager
	})
	t.Logf("swapped on both in %v", time.Since(pushed))
	for _, c := range []*Cache{a, b} {
		// The status record follows the strategy within a tick.
		eventually(t, time.Second, "status record", func() bool {
			st := o.status(c.InstanceID())
			return st["rollout"] == float64(n) && st["name"] == "fixed" && st["strategy"] == "eager" && c.Stats().Policy == "fixed"
		})
	}

	o.rollback()
	eventually(t, 2*time.Second, "both back on their local policy", func() bool {
		return runs(o, a, local, "local") && runs(o, b, local, "local")
	})

	n, _ = o.push(wasm, "", false)
	eventually(t, 2*time.Second, "the unsigned push refused", func() bool {
		return strings.HasPrefix(rejectedReason(o.status(a.InstanceID())), "unsigned") &&
			strings.HasPrefix(rejectedReason(o.status(b.InstanceID())), "unsigned")
	})
	if !runs(o, a, local, "local") || o.status(a.InstanceID())["rollout"] != float64(n) {
		t.Fatalf("after an unsigned push: %v", o.status(a.InstanceID()))
	}

	missing := strings.Repeat("ab", 32)
	o.write(map[string]string{"sha256": missing, "sig": o.sign(missing, "")})
	eventually(t, 2*time.Second, "a missing blob refused", func() bool {
		return strings.HasPrefix(rejectedReason(o.status(a.InstanceID())), "missing")
	})
	odd := strings.Repeat("cd", 32)
	o.rdb.LPush(bg, o.k+"policy:blob:"+odd, "x")
	o.write(map[string]string{"sha256": odd, "sig": o.sign(odd, "")})
	eventually(t, 2*time.Second, "a blob of the wrong type refused", func() bool {
		return strings.HasPrefix(rejectedReason(o.status(a.InstanceID())), "missing: WRONGTYPE")
	})
	o.push(wasm, `{"bogus":1}`, true)
	eventually(t, 2*time.Second, "an unknown config member refused", func() bool {
		return strings.HasPrefix(rejectedReason(o.status(a.InstanceID())), "config: bogus:")
	})
	o.push(wasm, `{"window-ms":-5}`, true)
	eventually(t, 2*time.Second, "a config the policy refuses", func() bool {
		return strings.HasPrefix(rejectedReason(o.status(a.InstanceID())), "config: window-ms:")
	})
	if !runs(o, a, local, "local") || !runs(o, b, local, "local") {
		t.Fatal("a refused rollout changed the running policy")
	}

	// Announcements are hints: a malformed one is counted, a forged one costs a read.
	before := a.Stats().Malformed
	o.rdb.Publish(bg, "aci:"+space+":policy", "policy 7")
	o.rdb.Publish(bg, "aci:"+space+":policy", `{"action":"policy","rollout":999999,"source":"forger"}`)
	eventually(t, time.Second, "a malformed announcement counted", func() bool { return a.Stats().Malformed == before+1 })
	if a.Stats().PolicyOrigin != "local" {
		t.Fatal("a forged announcement changed the policy")
	}
}

// TestRolloutPublishesTheOldBatch: keys buffered under batched right before a swap are
// published by the swap (as a batched invalidate), long before the old batch interval ends:
// a reader elsewhere stops serving the old values.
func TestRolloutPublishesTheOldBatch(t *testing.T) {
	space := ns(t)
	o := newOperator(t, space)
	writer := newCache(t, WithNamespace(space), WithPolicyPublicKey(o.pub), WithFixedStrategy(policy.StrategyBatched),
		WithRole(RoleController))
	reader := newCache(t, WithNamespace(space), WithRole(RoleFollower), WithLocalTTL(time.Minute), WithoutPolicyRollouts())
	sub := newClient(t).Subscribe(bg, "aci:"+space+":invalidation")
	defer sub.Close()
	if _, err := sub.Receive(bg); err != nil {
		t.Fatal(err)
	}
	keys := []string{"b1", "b2", "b3", "b4"}
	for _, k := range keys {
		if err := writer.Set(bg, k, "old", time.Minute); err != nil {
			t.Fatal(err)
		}
	}
	// Let the first batch go out, then the reader caches the old values.
	time.Sleep(3 * time.Second)
	for _, k := range keys {
		if v, err := reader.Get(bg, k); err != nil || v != "old" {
			t.Fatalf("reader: %q %v", v, err)
		}
	}
	hits := reader.Stats().L1Hits
	if v, _ := reader.Get(bg, "b1"); v != "old" || reader.Stats().L1Hits != hits+1 {
		t.Fatal("the reader does not serve from L1")
	}
	for len(sub.Channel()) > 0 {
		<-sub.Channel()
	}
	for _, k := range keys {
		if err := writer.Set(bg, k, "new", time.Minute); err != nil {
			t.Fatal(err)
		}
	}
	if writer.Strategy() != policy.StrategyBatched {
		t.Fatalf("writer strategy %v", writer.Strategy())
	}
	wasm, fixed := readPolicy(t, "fixed")
	start := time.Now()
	o.push(wasm, `{"initial-strategy":"eager"}`, true)
	got := map[string]bool{}
	deadline := time.After(2 * time.Second)
	for len(got) < len(keys) {
		select {
		case m := <-sub.Channel():
			d, bad := decode([]byte(m.Payload))
			if bad == "" && d.action == actInvalidate && d.strategy == policy.StrategyBatched {
				for _, k := range d.keys {
					got[strings.TrimPrefix(k, "aci:"+space+":")] = true
				}
			}
		case <-deadline:
			t.Fatalf("after 2 s the batched keys published are %v (want %v)", got, keys)
		}
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("the old batch took %v", d)
	}
	eventually(t, time.Second, "the reader reads the new values", func() bool {
		for _, k := range keys {
			if v, _ := reader.Get(bg, k); v != "new" {
				return false
			}
		}
		return true
	})
	if !runs(o, writer, fixed, "pushed") || writer.Strategy() != policy.StrategyEager {
		t.Fatalf("writer: %+v", writer.Stats())
	}
	// Writes after the swap are the new policy's: eager.
	applied := reader.Stats().InvalidationsApplied
	_ = writer.Set(bg, "b1", "newer", time.Minute)
	eventually(t, time.Second, "an eager write after the swap", func() bool { return reader.Stats().InvalidationsApplied > applied })
}

// TestRolloutLateJoiner: a cache started after a push runs the pushed policy before New
// returns, so it never serves under its local one.
func TestRolloutLateJoiner(t *testing.T) {
	space := ns(t)
	o := newOperator(t, space)
	wasm, fixed := readPolicy(t, "fixed")
	n, _ := o.push(wasm, `{"initial-strategy":"eager"}`, true)
	c := newCache(t, WithNamespace(space), WithPolicyPublicKey(o.pub))
	if s := c.Stats(); s.PolicySHA256 != fixed || s.PolicyOrigin != "pushed" || s.PolicyRollout != n || c.Strategy() != policy.StrategyEager {
		t.Fatalf("late joiner: %+v", s)
	}
}

// TestRolloutNoTrust: a cache with neither a key nor an allow-list ignores pushes, reporting
// each as refused.
func TestRolloutNoTrust(t *testing.T) {
	space := ns(t)
	o := newOperator(t, space)
	c := newCache(t, WithNamespace(space), WithTick(100*time.Millisecond))
	local := c.Stats().PolicySHA256
	wasm, _ := readPolicy(t, "fixed")
	n, _ := o.push(wasm, `{"initial-strategy":"eager"}`, true)
	eventually(t, 2*time.Second, "the push reported as refused", func() bool {
		st := o.status(c.InstanceID())
		return strings.HasPrefix(rejectedReason(st), "no policy trust configured") && st["rollout"] == float64(n) && st["trust"] == "none"
	})
	if s := c.Stats(); s.PolicySHA256 != local || s.PolicyOrigin != "local" || s.PolicySwaps != 0 {
		t.Fatalf("%+v", s)
	}
	// The allow-list alone trusts the hash (with the host's own config).
	_, fixed := readPolicy(t, "fixed")
	d := newCache(t, WithNamespace(space), WithPolicyAllowHashes(fixed))
	if s := d.Stats(); s.PolicySHA256 == fixed {
		t.Fatalf("an allow-listed hash ran with a config override: %+v", s)
	}
	o.push(wasm, "", false)
	eventually(t, 2*time.Second, "the allow-listed hash runs", func() bool { return runs(o, d, fixed, "pushed") })
}

// TestRolloutHostileCanaryRolledBack: the looping policy pushed as a canary to one instance
// is rolled back by that instance after its faults: it reverts at once, K policy:bad holds the
// hash, K policy:current returns to the previous target, and the other instance never runs it.
func TestRolloutHostileCanaryRolledBack(t *testing.T) {
	space := ns(t)
	o := newOperator(t, space)
	opts := []Option{WithNamespace(space), WithPolicyPublicKey(o.pub), WithTick(100 * time.Millisecond)}
	canary := newCache(t, append(opts, WithInstanceID("c1"+space))...)
	other := newCache(t, append(opts, WithInstanceID("c2"+space))...)
	fixedWasm, fixed := readPolicy(t, "fixed")
	o.push(fixedWasm, `{"initial-strategy":"eager"}`, true)
	eventually(t, 2*time.Second, "both run fixed", func() bool {
		return runs(o, canary, fixed, "pushed") && runs(o, other, fixed, "pushed")
	})
	otherSwaps := other.Stats().PolicySwaps

	hostileWasm, hostile := readPolicy(t, "hostile")
	// A short window, so the fault waits of section 7 are short too.
	n, _ := o.push(hostileWasm, `{"window-ms":200}`, true, canary.InstanceID())
	// 5 s, not the 2 s a swap is held to elsewhere: this is the setup of the test, and once (CI,
	// Valkey, a loaded machine) the canary's subscription, liveness-checked at a 100 ms tick,
	// timed out just before the push and heard it only after resubscribing.
	eventually(t, 5*time.Second, "the canary runs the hostile policy", func() bool { return runs(o, canary, hostile, "pushed") })
	for i := 0; canary.Stats().PolicySHA256 == hostile; i++ {
		if i > 100 {
			t.Fatalf("the canary still runs the hostile policy: %+v", canary.Stats())
		}
		start := time.Now()
		if err := canary.Set(bg, "hostile:loop", "x", time.Minute); err != nil {
			t.Fatal(err)
		}
		if d := time.Since(start); d > time.Second {
			t.Fatalf("a looping call held Set for %v", d)
		}
		time.Sleep(60 * time.Millisecond)
	}
	eventually(t, 2*time.Second, "the fleet record rolled back", func() bool {
		cur := o.current()
		return cur["rollout"] == strconv.FormatUint(n+1, 10) && cur["sha256"] == fixed && cur["previous"] == hostile
	})
	cur := o.current()
	if !strings.HasPrefix(cur["reason"], "auto-rollback: "+canary.InstanceID()+": 3 faults") || cur["by"] != canary.InstanceID() ||
		cur["canary"] != "" || cur["config"] != `{"initial-strategy":"eager"}` {
		t.Fatalf("record %v", cur)
	}
	if why, err := o.rdb.HGet(bg, o.k+"policy:bad", hostile).Result(); err != nil || !strings.HasPrefix(why, "auto-rollback") {
		t.Fatalf("K policy:bad: %q %v", why, err)
	}
	eventually(t, 2*time.Second, "the canary runs fixed again", func() bool { return runs(o, canary, fixed, "pushed") })
	if !strings.HasPrefix(rejectedReason(o.status(canary.InstanceID())), "auto-rollback") {
		t.Fatalf("canary status %v", o.status(canary.InstanceID()))
	}
	if s := other.Stats(); s.PolicySHA256 != fixed || s.PolicySwaps != otherSwaps {
		t.Fatalf("the other instance: %+v", s)
	}
	// The bad hash is not adopted again, even if named by a record (without a push, which
	// clears the mark).
	o.write(map[string]string{"sha256": hostile, "config": `{"window-ms":200}`, "sig": o.sign(hostile, `{"window-ms":200}`)})
	eventually(t, 2*time.Second, "a record naming the bad hash refused", func() bool {
		return strings.HasPrefix(rejectedReason(o.status(other.InstanceID())), "marked bad")
	})
	if other.Stats().PolicySHA256 != fixed {
		t.Fatal("the bad hash was adopted")
	}
}

// TestSwapPolicy: the local API swaps at once and the new policy becomes the local one.
func TestSwapPolicy(t *testing.T) {
	space := ns(t)
	c := newCache(t, WithNamespace(space), WithRole(RoleController))
	wasm, fixed := readPolicy(t, "fixed")
	var ce *ConfigError
	if err := c.SwapPolicy(bg, wasm, `{"hold-ms":"x"}`); !errors.As(err, &ce) || !strings.Contains(ce.Reason, "hold-ms") {
		t.Fatalf("bad override: %v", err)
	}
	if err := c.SwapPolicy(bg, []byte("\x00asm junk"), ""); !errors.Is(err, ErrInvalid) {
		t.Fatalf("junk: %v", err)
	}
	if err := c.SwapPolicy(bg, wasm, `{"initial-strategy":"batched"}`); err != nil {
		t.Fatal(err)
	}
	if s := c.Stats(); s.PolicySHA256 != fixed || s.PolicyOrigin != "local" || c.Strategy() != policy.StrategyBatched || s.PolicySwaps != 1 {
		t.Fatalf("%+v", s)
	}
	ctx, cancel := context.WithTimeout(bg, 5*time.Second)
	defer cancel()
	if err := c.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.SwapPolicy(bg, wasm, ""); !errors.Is(err, ErrClosed) {
		t.Fatalf("after Close: %v", err)
	}
}

// TestRolloutReads: the record is read after a resubscription and by the 10 s poll even when
// no announcement arrives, and announcements cause at most one read per tick.
func TestRolloutReads(t *testing.T) {
	space := ns(t)
	o := newOperator(t, space)
	const tick = 100 * time.Millisecond
	c := newCache(t, WithNamespace(space), WithPolicyPublicKey(o.pub), WithTick(tick))
	local := c.Stats().PolicySHA256
	wasm, fixed := readPolicy(t, "fixed")
	// A record written without an announcement (as if the announcement were lost).
	silent := func(rollout uint64, sha, config string) {
		o.rdb.Set(bg, o.k+"policy:blob:"+fixed, wasm, 0)
		sig := ""
		if sha != "" {
			sig = o.sign(sha, config)
		}
		if err := o.rdb.HSet(bg, o.k+"policy:current", "rollout", strconv.FormatUint(rollout, 10), "sha256", sha,
			"config", config, "sig", sig, "previous", "", "previous_config", "", "previous_sig", "", "canary", "").Err(); err != nil {
			t.Fatal(err)
		}
	}
	silent(1, fixed, "")
	time.Sleep(3 * tick)
	if c.Stats().PolicySHA256 != local {
		t.Fatal("adopted a record without an announcement, resubscription or poll")
	}
	if err := o.rdb.Do(bg, "CLIENT", "KILL", "TYPE", "pubsub").Err(); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "the record read after the resubscription", func() bool {
		return c.Stats().PolicySHA256 == fixed && c.Stats().Resubscribes > 0
	})

	// A flood of (forged) announcements: at most one read per tick because of them.
	hgetalls := func() int {
		info := o.rdb.Info(bg, "commandstats").Val()
		i := strings.Index(info, "cmdstat_hgetall:calls=")
		if i < 0 {
			return 0
		}
		n, _ := strconv.Atoi(strings.SplitN(info[i+len("cmdstat_hgetall:calls="):], ",", 2)[0])
		return n
	}
	before, start := hgetalls(), time.Now()
	for i := range 100 {
		o.rdb.Publish(bg, "aci:"+space+":policy", `{"action":"policy","rollout":`+strconv.Itoa(1000+i)+`,"source":"forger"}`)
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(2 * tick)
	reads, ticks := hgetalls()-before, int(time.Since(start)/tick)
	if reads > ticks+2 {
		t.Fatalf("%d HGETALLs in %d ticks of announcements", reads, ticks)
	}
	t.Logf("%d announcements: %d HGETALLs in %d ticks", 100, reads, ticks)

	silent(2, "", "")
	eventually(t, 12*time.Second, "the record read by the 10 s poll", func() bool { return c.Stats().PolicySHA256 == local })
}

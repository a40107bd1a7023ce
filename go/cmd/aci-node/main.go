// Command aci-node is the Go host's node driver (docs/NODE.md): one aci-cache instance driven
// by commands on standard input, one JSON answer per line on standard output.
//
//	go run ./cmd/aci-node --redis redis://127.0.0.1:6379 --namespace shop
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/aci-cache/aci-cache/go/acicache"
	"github.com/aci-cache/aci-cache/go/policy"
)

func main() { os.Exit(run(os.Args[1:], os.Stdin, os.Stdout)) }

// usageError is a bad flag or value: one line naming it, exit code 2.
func usageError(format string, args ...any) int {
	fmt.Fprintf(os.Stderr, "aci-node: "+format+"\n", args...)
	return 2
}

func run(args []string, stdin io.Reader, stdout io.Writer) int {
	fs := flag.NewFlagSet("aci-node", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	url := fs.String("redis", "redis://127.0.0.1:6379", "Redis URL")
	cluster := fs.String("cluster", "", "seed URLs of a Redis Cluster (URL[,URL...]), instead of --redis")
	namespace := fs.String("namespace", "", "namespace")
	role := fs.String("role", "auto", "auto|controller|follower")
	strategy := fs.String("strategy", "", "ttl|batched|eager: the fixed policy with this strategy")
	tickMs := fs.Int("tick-ms", 250, "tick in ms")
	instanceID := fs.String("instance-id", "", "instance id")
	localTTLMs := fs.Int("local-ttl-ms", 5000, "longest L1 entry life in ms")
	publicKey := fs.String("policy-public-key", "", "follow policy pushes signed by this ed25519 key (64 hex)")
	allowHashes := fs.String("policy-allow-hashes", "", "follow pushes of these component hashes (H1,H2)")
	rollbackFaults := fs.Int("policy-rollback-faults", 3, "faults of a pushed policy before rolling the fleet back")
	if err := fs.Parse(args); err != nil {
		return usageError("%v", err)
	}
	if fs.NArg() > 0 {
		return usageError("unexpected argument %q", fs.Arg(0))
	}
	var rdb redis.UniversalClient
	if *cluster != "" {
		// As `aci node --cluster`: the fleet on sharded Pub/Sub (docs/WIRE.md 10).
		var copt *redis.ClusterOptions
		for _, u := range strings.Split(*cluster, ",") {
			if u == "" {
				continue
			}
			o, err := redis.ParseURL(u)
			if err != nil {
				return usageError("--cluster %q: %v", u, err)
			}
			if copt == nil {
				copt = &redis.ClusterOptions{Username: o.Username, Password: o.Password, TLSConfig: o.TLSConfig}
			}
			copt.Addrs = append(copt.Addrs, o.Addr)
		}
		if copt == nil {
			return usageError("--cluster %q: no URL", *cluster)
		}
		rdb = redis.NewClusterClient(copt)
	} else {
		opt, err := redis.ParseURL(*url)
		if err != nil {
			return usageError("--redis %q: %v", *url, err)
		}
		rdb = redis.NewClient(opt)
	}
	defer rdb.Close()
	opts := []acicache.Option{
		acicache.WithTick(time.Duration(*tickMs) * time.Millisecond),
		acicache.WithLocalTTL(time.Duration(*localTTLMs) * time.Millisecond),
		acicache.WithLogger(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))),
	}
	flagSet := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { flagSet[f.Name] = true })
	if flagSet["namespace"] {
		opts = append(opts, acicache.WithNamespace(*namespace))
	}
	if flagSet["instance-id"] {
		opts = append(opts, acicache.WithInstanceID(*instanceID))
	}
	switch *role {
	case "auto":
	case "controller":
		opts = append(opts, acicache.WithRole(acicache.RoleController))
	case "follower":
		opts = append(opts, acicache.WithRole(acicache.RoleFollower))
	default:
		return usageError("--role %q: must be auto, controller or follower", *role)
	}
	if flagSet["strategy"] {
		s, err := policy.ParseStrategy(*strategy)
		if err != nil {
			return usageError("--strategy %q: must be ttl, batched or eager", *strategy)
		}
		opts = append(opts, acicache.WithFixedStrategy(s))
	}
	if flagSet["policy-public-key"] {
		opts = append(opts, acicache.WithPolicyPublicKey(*publicKey))
	}
	if flagSet["policy-allow-hashes"] {
		var hashes []string
		for _, h := range strings.Split(*allowHashes, ",") {
			if h != "" {
				hashes = append(hashes, h)
			}
		}
		opts = append(opts, acicache.WithPolicyAllowHashes(hashes...))
	}
	if *rollbackFaults <= 0 {
		return usageError("--policy-rollback-faults %d: must be greater than zero", *rollbackFaults)
	}
	opts = append(opts, acicache.WithPolicyRollbackFaults(*rollbackFaults))
	if *tickMs <= 0 {
		return usageError("--tick-ms %d: must be greater than zero", *tickMs)
	}
	if *localTTLMs <= 0 {
		return usageError("--local-ttl-ms %d: must be greater than zero", *localTTLMs)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	cache, err := acicache.New(ctx, rdb, opts...)
	cancel()
	if err != nil {
		var ce *acicache.ConfigError
		if errors.As(err, &ce) {
			return usageError("--%s: %v", strings.ReplaceAll(ce.Field, "_", "-"), err)
		}
		fmt.Fprintln(os.Stderr, "aci-node:", err)
		return 1
	}
	out := json.NewEncoder(stdout)
	out.SetEscapeHTML(false)
	_ = out.Encode(struct {
		Ready      bool   `json:"ready"`
		InstanceID string `json:"instance_id"`
		Host       string `json:"host"`
		Protocol   int    `json:"protocol"`
	}{true, cache.InstanceID(), "go", 2})

	lines := make(chan string)
	go func() {
		sc := bufio.NewScanner(stdin)
		sc.Buffer(make([]byte, 1<<20), 16<<20)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	shutdown := func() int {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := cache.Close(ctx); err != nil {
			fmt.Fprintln(os.Stderr, "aci-node: close:", err)
		}
		return 0
	}
	for {
		select {
		case <-sigs:
			return shutdown()
		case line, ok := <-lines:
			if !ok {
				return shutdown()
			}
			if strings.TrimSpace(line) == "quit" {
				code := shutdown()
				_ = out.Encode(map[string]any{"bye": true})
				return code
			}
			_ = out.Encode(command(cache, line))
		}
	}
}

func command(c *acicache.Cache, line string) any {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	w := strings.Split(strings.TrimSpace(line), " ")
	fail := func(err error) any { return map[string]string{"error": strings.ReplaceAll(err.Error(), "\n", " ")} }
	switch {
	case w[0] == "set" && (len(w) == 3 || len(w) == 4):
		var ttl time.Duration
		if len(w) == 4 {
			ms, err := strconv.ParseInt(w[3], 10, 64)
			if err != nil || ms <= 0 {
				return map[string]string{"error": fmt.Sprintf("TTL_MS %q: must be a positive integer", w[3])}
			}
			ttl = time.Duration(ms) * time.Millisecond
		}
		if err := c.Set(ctx, w[1], w[2], ttl); err != nil {
			return fail(err)
		}
		return map[string]bool{"ok": true}
	case w[0] == "get" && len(w) == 2:
		v, err := c.Get(ctx, w[1])
		if errors.Is(err, acicache.Nil) {
			return map[string]any{"value": nil}
		}
		if err != nil {
			return fail(err)
		}
		return map[string]any{"value": v}
	case w[0] == "del" && len(w) == 2:
		if _, err := c.Delete(ctx, w[1]); err != nil {
			return fail(err)
		}
		return map[string]bool{"ok": true}
	case w[0] == "strategy" && len(w) == 1:
		return map[string]string{"strategy": c.Strategy().String()}
	case w[0] == "stats" && len(w) == 1:
		return c.Stats()
	case w[0] == "policy" && len(w) == 1:
		return c.PolicyStatus() // an extra: this instance's status record (docs/WIRE.md 9.8)
	}
	return map[string]string{"error": fmt.Sprintf("unknown command %q (set K V [TTL_MS], get K, del K, strategy, stats, policy, quit)", line)}
}

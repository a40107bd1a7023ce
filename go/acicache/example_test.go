package acicache_test

import (
	"context"
	"fmt"
	"log"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/aci-cache/aci-cache/go/acicache"
)

func Example() {
	ctx := context.Background()
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:6379"})
	defer rdb.Close()

	cache, err := acicache.New(ctx, rdb, acicache.WithNamespace("shop"))
	if err != nil {
		log.Fatal(err) // a *acicache.ConfigError names a bad option; else Redis was unreachable
	}
	defer cache.Close(ctx)

	cache.OnSwitch(func(from, to acicache.Strategy) { log.Printf("strategy %v -> %v", from, to) })
	if err := cache.Set(ctx, "user:1", "alice", time.Minute); err != nil {
		log.Fatal(err)
	}
	v, err := cache.Get(ctx, "user:1") // from L1: read-your-writes
	switch {
	case err == acicache.Nil:
		fmt.Println("no such key")
	case err != nil:
		log.Fatal(err)
	default:
		fmt.Println(v, cache.Strategy())
	}
}

package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestDriver runs the driver in process against a real redis-server: ready line, every
// command, a bad command, quit.
func TestDriver(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	_ = l.Close()
	srv := exec.Command(redisServerBinary(), "--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no")
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = srv.Process.Kill(); _ = srv.Wait() }()
	for i := 0; ; i++ {
		if c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port)); err == nil {
			_ = c.Close()
			break
		}
		if i > 200 {
			t.Fatal("redis-server did not start")
		}
		time.Sleep(20 * time.Millisecond)
	}

	if code := run([]string{"--role", "boss"}, strings.NewReader(""), io.Discard); code != 2 {
		t.Errorf("bad --role: exit %d, want 2", code)
	}
	if code := run([]string{"--namespace", "a:b"}, strings.NewReader(""), io.Discard); code != 2 {
		t.Errorf("bad --namespace: exit %d, want 2", code)
	}
	for _, bad := range [][]string{{"--policy-public-key", "XYZ"}, {"--policy-allow-hashes", "abc"}, {"--policy-rollback-faults", "0"}} {
		if code := run(bad, strings.NewReader(""), io.Discard); code != 2 {
			t.Errorf("%v: exit %d, want 2", bad, code)
		}
	}

	in := "set k v\nset t v 60000\nget k\nget missing\ndel k\nget k\nstrategy\nstats\nbogus\nquit\n"
	pr, pw := io.Pipe()
	done := make(chan int, 1)
	go func() {
		defer pw.Close()
		done <- run([]string{"--redis", fmt.Sprintf("redis://127.0.0.1:%d", port), "--namespace", "shop",
			"--strategy", "eager", "--instance-id", "node-1", "--tick-ms", "50",
			"--policy-public-key", "03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8",
			"--policy-allow-hashes", strings.Repeat("ab", 32) + "," + strings.Repeat("cd", 32), "--policy-rollback-faults", "2"},
			strings.NewReader(in), pw)
	}()
	var lines []map[string]any
	sc := bufio.NewScanner(pr)
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("not one JSON object per line: %q", sc.Text())
		}
		lines = append(lines, m)
	}
	if code := <-done; code != 0 {
		t.Fatalf("exit %d", code)
	}
	want := []string{
		`{"host":"go","instance_id":"node-1","protocol":2,"ready":true}`,
		`{"ok":true}`, `{"ok":true}`, `{"value":"v"}`, `{"value":null}`, `{"ok":true}`, `{"value":null}`,
		`{"strategy":"eager"}`,
	}
	if len(lines) != len(want)+3 {
		t.Fatalf("%d lines: %v", len(lines), lines)
	}
	for i, w := range want {
		got, _ := json.Marshal(lines[i])
		if string(got) != w {
			t.Errorf("line %d: %s, want %s", i, got, w)
		}
	}
	stats := lines[len(want)]
	for _, f := range []string{"reads", "l1_hits", "l1_misses", "writes", "messages_sent", "pubsub_received",
		"messages_received", "invalidations_applied", "gaps", "malformed", "is_controller", "strategy",
		"policy", "policy_sha256", "policy_origin", "policy_faults"} {
		if _, ok := stats[f]; !ok {
			t.Errorf("stats lacks %s: %v", f, stats)
		}
	}
	if stats["policy"] != "fixed" || stats["policy_origin"] != "local" || len(stats["policy_sha256"].(string)) != 64 {
		t.Errorf("policy stats %v", stats)
	}
	if stats["writes"] != float64(2) || stats["reads"] != float64(3) {
		t.Errorf("stats %v", stats)
	}
	if _, ok := lines[len(want)+1]["error"]; !ok {
		t.Errorf("bogus command answered %v", lines[len(want)+1])
	}
	if lines[len(want)+2]["bye"] != true {
		t.Errorf("quit answered %v", lines[len(want)+2])
	}
}

// redisServerBinary is the server the test starts: $ACI_REDIS_SERVER (scripts/test.sh's Valkey
// pass sets it to valkey-server), else redis-server from PATH.
func redisServerBinary() string {
	if b := os.Getenv("ACI_REDIS_SERVER"); b != "" {
		return b
	}
	return "redis-server"
}

//! The workload benchmark's library against a real redis-server: what it measures must be what
//! happened (eager never serves a superseded value past propagation, ttl does; every eager write
//! is one PUBLISH on the server; reads hit L1), on a short trace.

use std::time::Duration;

use aci_cache::simulate::parse_trace;
use aci_cache::workload::{self, Contender, Workload};
use aci_testkit::RedisServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eager_and_ttl_runs_measure_what_their_strategies_promise() {
    let server = RedisServer::start(&[]).expect("redis-server must be installed");
    // 3 s of writes at a rate no policy ignores, on 50 hot keys.
    let trace = parse_trace("40/s for 3s\n").unwrap();
    let w = Workload { instances: 2, keys: 50, reads_per_sec: 400, tail: Duration::from_millis(500), ..Workload::default() };
    let runs: Vec<Contender> = Contender::standard().into_iter().filter(|c| c.label == "ttl" || c.label == "eager").collect();
    let reports = workload::run_all(&server.url(), &trace, &runs, &w, |r| {
        println!("{}: {} writes {} reads {} published {} delivered {} stale, p99 {:.1} ms, max {:.1} ms",
            r.label, r.writes, r.reads, r.published, r.delivered, r.stale_reads, r.staleness_ms(0.99), r.staleness_ms(1.0));
    }).await.unwrap();
    print!("{}", workload::table(&reports));
    let (ttl, eager) = (&reports[0], &reports[1]);
    for r in &reports {
        assert_eq!(r.writes, 120, "{}: every write of the trace is made", r.label);
        assert_eq!(r.write_errors + r.read_errors, 0, "{}", r.label);
        // ~3.5 s at 400 reads/s on each of 2 instances.
        assert!(r.reads > 2000, "{}: {} reads", r.label, r.reads);
        assert!(r.l1_hit_ratio() > 0.3, "{}: L1 hit ratio {}", r.label, r.l1_hit_ratio());
        assert!(r.redis_commands > r.writes, "{}: the server counted {} commands", r.label, r.redis_commands);
        assert!(!r.timeline.is_empty());
    }
    // Eager: one PUBLISH per write (plus heartbeats and reports), each delivered to both
    // instances; a read may be superseded only while the message is in flight.
    assert!(eager.published >= 120, "{}", eager.published);
    assert!(eager.delivered >= 2 * 120, "{}", eager.delivered);
    assert!(eager.staleness_ms(1.0) < 250.0, "eager max staleness {} ms", eager.staleness_ms(1.0));
    assert!(eager.timeline.iter().all(|s| s.strategy == aci_cache::Strategy::Eager));
    // Ttl: no invalidations at all, so readers keep superseded values, never past local_ttl.
    assert!(ttl.published + 90 < eager.published, "ttl {} vs eager {}", ttl.published, eager.published);
    assert!(ttl.stale_reads > 0 && ttl.stale_ratio() > eager.stale_ratio());
    assert!(ttl.staleness_ms(1.0) < w.local_ttl.as_millis() as f64 + 250.0, "ttl max staleness {} ms", ttl.staleness_ms(1.0));
    assert_eq!(workload::on_frontier(&reports), [true, true]);
}

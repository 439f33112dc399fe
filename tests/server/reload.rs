use crate::common::*;

const V1: &str = "domain: d\ndescriptors:\n  - key: a\n    rate_limit: {unit: hour, requests_per_unit: 5}\n  - key: b\n    rate_limit: {unit: hour, requests_per_unit: 5}\n";
const V2: &str = "domain: d\ndescriptors:\n  - key: a\n    rate_limit: {unit: hour, requests_per_unit: 5}\n  - key: b\n    rate_limit: {unit: hour, requests_per_unit: 50}\n";

#[tokio::test]
async fn a_valid_change_is_swapped_in_and_unchanged_rules_keep_their_buckets() {
    let mut h = Harness::start(V1).await;
    h.ask(request("d", vec![with_hits(desc(&[("a", "x")]), 3)]))
        .await;
    h.ask(request("d", vec![with_hits(desc(&[("b", "x")]), 3)]))
        .await;
    write(h.dir.path(), "config.yaml", V2);
    eventually("the new config is served", async || {
        h.get_text("/rlconfig")
            .await
            .contains("requests_per_unit=50")
    })
    .await;
    assert_eq!(
        h.remaining("d", &[("a", "x")]).await,
        2,
        "unchanged rule keeps its state"
    );
    assert_eq!(
        h.remaining("d", &[("b", "x")]).await,
        50,
        "changed rule starts fresh"
    );
}

#[tokio::test]
async fn a_removed_rule_is_no_longer_exported_and_a_changed_rule_counts_on() {
    let mut h = Harness::start(V1).await;
    h.ask(request("d", vec![with_hits(desc(&[("a", "x")]), 3)]))
        .await;
    h.ask(request("d", vec![with_hits(desc(&[("b", "x")]), 3)]))
        .await;
    let before = h.get_text("/metrics").await;
    assert!(before.contains("limit=\"b\""), "{before}");
    // Rule b goes; rule a changes its limit (a new rule id, so fresh buckets).
    write(
        h.dir.path(),
        "config.yaml",
        "domain: d\ndescriptors:\n  - key: a\n    rate_limit: {unit: hour, requests_per_unit: 6}\n",
    );
    eventually("the new config is served", async || {
        h.get_text("/rlconfig")
            .await
            .contains("requests_per_unit=6")
    })
    .await;
    let after = h.get_text("/metrics").await;
    assert!(
        !after.contains("limit=\"b\""),
        "every series of the removed rule is gone: {after}"
    );
    assert!(
        after.contains("tollgate_hits_total{domain=\"d\",limit=\"a\"} 3\n"),
        "the changed rule's counter counts on: {after}"
    );
    assert!(
        after.contains("token_bucket_capacity{domain=\"d\",limit=\"a\"} 6\n"),
        "its gauges are the new limit's: {after}"
    );
}

#[tokio::test]
async fn an_invalid_change_is_refused_counted_and_the_old_config_keeps_serving() {
    let mut h = Harness::start(V1).await;
    write(h.dir.path(), "config.yaml", "domain: d\ndescriptors:\n  - key: a\n    rate_limit: {unit: fortnight, requests_per_unit: 1}\n");
    eventually("the failed load is counted", async || {
        let m = h.get_text("/metrics").await;
        m.contains("tollgate_config_loads_total{result=\"failed\"} 1")
    })
    .await;
    assert_eq!(h.remaining("d", &[("a", "x")]).await, 5);
    assert!(
        h.get_text("/rlconfig").await.contains("d.a:"),
        "old config still served"
    );
}

#[tokio::test]
async fn a_configmap_style_symlink_swap_is_picked_up() {
    let mut h = Harness::start("domain: unused\ndescriptors: []\n").await;
    let dir = h.dir.path().to_path_buf();
    std::fs::remove_file(dir.join("config.yaml")).expect("rm");
    // Kubernetes layout: config.yaml -> ..data/config.yaml, ..data -> ..v1
    std::fs::create_dir(dir.join("..v1")).expect("mkdir");
    std::fs::write(dir.join("..v1/config.yaml"), V1).expect("write");
    std::os::unix::fs::symlink("..v1", dir.join("..data")).expect("link");
    std::os::unix::fs::symlink("..data/config.yaml", dir.join("config.yaml")).expect("link");
    eventually("v1 is served", async || {
        h.get_text("/rlconfig").await.contains("d.a:")
    })
    .await;
    std::fs::create_dir(dir.join("..v2")).expect("mkdir");
    std::fs::write(dir.join("..v2/config.yaml"), V2).expect("write");
    std::os::unix::fs::symlink("..v2", dir.join("..data_tmp")).expect("link");
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).expect("atomic swap");
    eventually("v2 is served", async || {
        h.get_text("/rlconfig")
            .await
            .contains("requests_per_unit=50")
    })
    .await;
    assert_eq!(h.remaining("d", &[("b", "x")]).await, 50);
}

#[tokio::test]
async fn deleting_every_config_file_is_refused_and_the_old_config_keeps_serving() {
    let mut h = Harness::start(V1).await;
    std::fs::remove_file(h.dir.path().join("config.yaml")).expect("rm");
    eventually("the empty config is counted as failed", async || {
        let m = h.get_text("/metrics").await;
        m.contains("tollgate_config_loads_total{result=\"failed\"} 1")
    })
    .await;
    for _ in 0..5 {
        h.ask(request("d", vec![desc(&[("a", "x")])])).await;
    }
    let over = h.ask(request("d", vec![desc(&[("a", "x")])])).await;
    assert_eq!(over.overall_code, 2, "the old limits still apply: {over:?}");
}

#[tokio::test]
async fn an_empty_config_is_served_only_when_allowed() {
    let h = Harness::start_with(V1, |s| s.allow_empty_config = true).await;
    std::fs::remove_file(h.dir.path().join("config.yaml")).expect("rm");
    eventually("the empty config is served", async || {
        !h.get_text("/rlconfig").await.contains("d.a")
    })
    .await;
    let m = h.get_text("/metrics").await;
    assert!(
        m.contains("tollgate_config_loads_total{result=\"ok\"} 2"),
        "{m}"
    );
}

#[tokio::test]
async fn a_file_written_in_two_parts_is_never_served_half_written() {
    let h = Harness::start_with(V1, |s| {
        s.reload_interval = std::time::Duration::from_millis(100)
    })
    .await;
    let path = h.dir.path().join("config.yaml");
    // The first part alone is a valid config (rule `a` only): served, it would drop rule `b`.
    let first =
        "domain: d\ndescriptors:\n  - key: a\n    rate_limit: {unit: hour, requests_per_unit: 5}\n";
    let writer = tokio::task::spawn_blocking(move || {
        use std::io::Write;
        for k in 0..16 {
            let mut f = std::fs::File::create(&path).expect("truncate");
            f.write_all(first.as_bytes()).expect("first part");
            f.flush().expect("flush");
            std::thread::sleep(std::time::Duration::from_millis(40));
            write!(
                f,
                "  - key: b\n    rate_limit: {{unit: hour, requests_per_unit: {}}}\n",
                10 + k
            )
            .expect("second part");
            drop(f);
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    });
    let mut polls = 0;
    while !writer.is_finished() {
        let served = h.get_text("/rlconfig").await;
        assert!(
            served.contains("d.b"),
            "half a file served after {polls} polls: {served}"
        );
        polls += 1;
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    writer.await.expect("writer");
    eventually("the last complete version is served", async || {
        h.get_text("/rlconfig")
            .await
            .contains("requests_per_unit=25")
    })
    .await;
}

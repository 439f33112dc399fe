//! Per-rule key budgets: a flood of one rule's keys leaves other rules their own buckets.

use crate::common::*;

const TWO_RULES: &str = "domain: d\ndescriptors:\n  - key: flood\n    rate_limit: {unit: hour, requests_per_unit: 5}\n  - key: user\n    rate_limit: {unit: hour, requests_per_unit: 1}\n";

#[tokio::test]
async fn one_rules_flood_of_drained_keys_does_not_deny_another_rules_new_keys() {
    let mut h = Harness::start_with(TWO_RULES, |s| s.max_keys = 1_000).await;
    // 1,024 drained keys of `flood`, 32 descriptors a request: more than max_keys.
    for batch in 0..32 {
        let descriptors = (0..32)
            .map(|i| with_hits(desc(&[("flood", &format!("k{}", batch * 32 + i))]), 5))
            .collect();
        h.ask(request("d", descriptors)).await;
    }
    // 100 new users, one hit each on a 1/hour limit: each has its own bucket, so all pass.
    // (Sharing 64 overflow buckets, at least 36 of them would be refused.)
    let mut over = 0;
    for u in 0..100 {
        let r = h
            .ask(request("d", vec![desc(&[("user", &format!("u{u}"))])]))
            .await;
        if r.overall_code == 2 {
            over += 1;
        }
    }
    assert_eq!(over, 0, "new keys of the other rule denied");
    let m = h.get_text("/metrics").await;
    assert!(
        m.contains(
            "tollgate_rule_keys_over_budget_total{domain=\"d\",limit=\"flood\",action=\"shared\"}"
        ),
        "the flooding rule is counted: {m}"
    );
    assert!(
        m.contains("tollgate_rule_live_keys{domain=\"d\",limit=\"user\"} 100"),
        "{m}"
    );
}

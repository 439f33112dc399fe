//! Step three: what a decision adds to the metrics. Only atomic adds on handles resolved when
//! the config was loaded (and, for per-request labels, on tallies published at scrape time).

use super::after::Kind;
use super::decide::Decision;
use super::resolve::{Limited, Plan};
use crate::metrics::Metrics;
use crate::store::Placement;

/// Count a decided request: per-rule counters, bucket observations, cap and domain counters.
pub(crate) fn account(metrics: &Metrics, d: &Decision<'_, '_>, now: i64, near_ratio: f64) {
    if d.unknown_domain() {
        metrics.unknown_domain.increment(1);
    }
    if d.global_shadow {
        metrics.global_shadow_mode.increment(1);
    }
    for plan in d.plans() {
        if let Plan::Limited(ls) = plan {
            for l in ls {
                limited(metrics, d, l, now, near_ratio);
            }
        }
    }
}

fn limited(metrics: &Metrics, d: &Decision<'_, '_>, l: &Limited<'_>, now: i64, near_ratio: f64) {
    let Some(c) = l.charge else {
        // A limit that admits nothing: every hit is over.
        record(l, now, l.hits, true, false);
        return;
    };
    let v = d.verdicts[c];
    let charge = &d.charges()[c];
    let hits = charge.hits;
    // A refund gives hits back: it is not a hit, over or within.
    if hits > 0 && l.kind != Kind::Refund {
        let capacity = u64::from(charge.limit.capacity());
        let over = !v.within;
        let used = capacity - v.outcome.remaining.min(capacity);
        let near = !over && used as f64 >= near_ratio * capacity as f64;
        record(l, now, hits, over, near);
        if v.charged && v.placement == Placement::Own {
            l.metrics
                .stats
                .observe_bucket(now, v.outcome.full_at_ns, v.outcome.remaining);
        }
    }
    match v.placement {
        Placement::Own => return,
        Placement::Shared => metrics.keys_shared.increment(1),
        Placement::Refused => metrics.keys_denied.increment(1),
    }
    l.metrics
        .stats
        .over_budget(v.placement == Placement::Shared);
}

fn record(l: &Limited<'_>, now: i64, hits: u64, over: bool, near: bool) {
    l.metrics.stats.record(now, hits, over, near, l.shadow);
    if let (Some(series), Some(label)) = (&l.metrics.detailed, &l.label) {
        series.record(label, hits, over, near, l.shadow);
    }
}

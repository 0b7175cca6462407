//! ACL micro-benchmarks: `Acl::may_publish` with the 1,000-rule ACL that `scripts/bench-acl.sh`
//! generates (same rules, same user, the harness's topic shape). `cargo bench --bench acl`.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use shardmq::acl::Acl;

/// The ACL of `scripts/bench-acl.sh` (`gen_acl`), rule for rule.
fn bench_acl_text() -> String {
    let mut lines = vec!["# generated: 1,000 rules".to_owned()];
    let mut rules = 0;
    let mut rule = |lines: &mut Vec<String>, text: String| {
        rules += 1;
        lines.push(text);
    };
    for k in 0..10 {
        rule(&mut lines, format!("topic read public/{k}/#"));
    }
    for n in 0..180 {
        lines.push(format!("user user{n}"));
        rule(&mut lines, format!("topic readwrite site/{n}/#"));
        rule(&mut lines, format!("topic read fleet/{}/+/status", n % 20));
        rule(&mut lines, format!("topic write cmd/{n}/+"));
        rule(&mut lines, format!("topic deny site/{n}/admin/#"));
    }
    for k in 0..250 {
        if k % 10 == 9 {
            rule(
                &mut lines,
                format!("pattern deny telemetry/{k}/%c/private/#"),
            );
        } else if k % 2 == 0 {
            rule(&mut lines, format!("pattern readwrite telemetry/{k}/%c/#"));
        } else {
            rule(&mut lines, format!("pattern read config/{k}/%u/#"));
        }
    }
    lines.push("user bench".to_owned());
    rule(&mut lines, "topic readwrite bh/#".to_owned());
    rule(&mut lines, "topic deny bh/+/admin/#".to_owned());
    for k in 0..18 {
        rule(&mut lines, format!("topic read alerts/{k}/#"));
    }
    assert_eq!(rules, 1000);
    lines.join("\n") + "\n"
}

fn acl_benches(c: &mut Criterion) {
    let acl = Acl::parse(&bench_acl_text()).expect("valid ACL");
    let empty = Acl::parse("user bench\ntopic readwrite bh/#\n").expect("valid ACL");
    let user = Some("bench");
    let client = "bh-1866743864-p2p-pub-42";
    let mut group = c.benchmark_group("acl_may_publish");
    // The bench's publish: granted by `bh/#` after the deny checks.
    group.bench_function("1000_rules/granted", |b| {
        b.iter(|| {
            acl.may_publish(
                black_box(user),
                black_box(client),
                black_box("bh/1866743864/p2p/42"),
            )
        })
    });
    group.bench_function("1000_rules/denied", |b| {
        b.iter(|| {
            acl.may_publish(
                black_box(user),
                black_box(client),
                black_box("bh/1/admin/x"),
            )
        })
    });
    // A topic only the patterns speak about (%c substituted in a later level).
    group.bench_function("1000_rules/pattern_granted", |b| {
        b.iter(|| {
            acl.may_publish(
                black_box(user),
                black_box(client),
                black_box("telemetry/8/bh-1866743864-p2p-pub-42/temp"),
            )
        })
    });
    // What a connection does: the client's part worked out once, at CONNECT.
    let prepared = acl.client_acl(user, client);
    group.bench_function("1000_rules/granted_prepared", |b| {
        b.iter(|| {
            acl.may_publish_with(
                black_box(&prepared),
                black_box(user),
                black_box(client),
                black_box("bh/1866743864/p2p/42"),
            )
        })
    });
    group.bench_function("1000_rules/denied_prepared", |b| {
        b.iter(|| {
            acl.may_publish_with(
                black_box(&prepared),
                black_box(user),
                black_box(client),
                black_box("bh/1/admin/x"),
            )
        })
    });
    group.bench_function("1000_rules/pattern_granted_prepared", |b| {
        b.iter(|| {
            acl.may_publish_with(
                black_box(&prepared),
                black_box(user),
                black_box(client),
                black_box("telemetry/8/bh-1866743864-p2p-pub-42/temp"),
            )
        })
    });
    group.bench_function("2_rules/granted", |b| {
        b.iter(|| {
            empty.may_publish(
                black_box(user),
                black_box(client),
                black_box("bh/1866743864/p2p/42"),
            )
        })
    });
    group.finish();
}

criterion_group!(benches, acl_benches);
criterion_main!(benches);

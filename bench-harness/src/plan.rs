//! Which connections a worker process and each of its threads open.
//!
//! Global numbering: subscribers `0..S`, publishers `0..P`, idle clients `0..C`. Index `i` of
//! each role goes to worker `i % W` and, inside it, to thread `(i / W) % T`, so publisher `i`
//! and subscriber `i` of a point-to-point pair share a thread. Connection number `g` (subscribers
//! first, then publishers, then idle clients) binds source address `g % K` of the K in use.

use std::net::Ipv4Addr;

use crate::config::{Config, FaninMode, Scenario};
use crate::pacing::phase;

/// Which publishers a subscriber should hear from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// Only this publisher (point to point).
    One(u32),
    /// Every publisher (fan-out, wildcard fan-in).
    All,
    /// Every publisher, once over the whole shared-subscription group.
    Shared,
}

/// What one connection does.
#[derive(Debug, Clone, PartialEq)]
pub enum RolePlan {
    /// Connects and idles.
    Idle,
    /// Publishes to `topic`; `phase` spreads paced publishers over one interval.
    Pub {
        /// Global publisher index (in every payload).
        id: u32,
        /// Topic name.
        topic: String,
        /// Pacing phase in [0, 1).
        phase: f64,
    },
    /// Subscribes to `filters`.
    Sub {
        /// Topic filters of the one SUBSCRIBE.
        filters: Vec<String>,
        /// Which publishers it should hear.
        expect: Expect,
    },
}

/// One connection to open.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnPlan {
    /// Role.
    pub role: RolePlan,
    /// MQTT client identifier.
    pub client_id: String,
    /// Source address to bind, when spreading over several.
    pub source: Option<Ipv4Addr>,
}

/// The connections of worker `worker`, one list per thread (subscribers first).
pub fn plan_worker(cfg: &Config, worker: usize) -> Vec<Vec<ConnPlan>> {
    let (w, t) = (cfg.workers, cfg.threads);
    let mut threads: Vec<Vec<ConnPlan>> = vec![Vec::new(); t];
    let prefix = cfg.prefix();
    let scenario = cfg.scenario.as_str();
    let source = |g: usize| (cfg.source_ips > 1).then(|| cfg.source_ip(g % cfg.source_ips));
    let mine = |i: usize| (i % w == worker).then_some((i / w) % t);

    for i in 0..cfg.subs {
        let Some(thread) = mine(i) else { continue };
        let (filters, expect) = match cfg.scenario {
            Scenario::P2p | Scenario::Latency | Scenario::Quiet => (
                vec![format!("{prefix}/{scenario}/{i}")],
                Expect::One(i as u32),
            ),
            Scenario::Fanout => (
                (0..cfg.topics)
                    .map(|k| format!("{prefix}/fanout/{k}"))
                    .collect(),
                Expect::All,
            ),
            Scenario::Fanin => match cfg.mode {
                Some(FaninMode::Wildcard) => (vec![format!("{prefix}/fanin/#")], Expect::All),
                _ => (
                    vec![format!("$share/{}/{prefix}/fanin/#", cfg.share_group)],
                    Expect::Shared,
                ),
            },
            Scenario::Conn => continue,
        };
        threads[thread].push(ConnPlan {
            role: RolePlan::Sub { filters, expect },
            client_id: format!("bh{}s{i}", cfg.run_id),
            source: source(i),
        });
    }
    for i in 0..cfg.pubs {
        let Some(thread) = mine(i) else { continue };
        let topic = match cfg.scenario {
            Scenario::Fanout => format!("{prefix}/fanout/{}", i % cfg.topics.max(1)),
            Scenario::Fanin => format!("{prefix}/fanin/{i}"),
            _ => format!("{prefix}/{scenario}/{i}"),
        };
        threads[thread].push(ConnPlan {
            role: RolePlan::Pub {
                id: i as u32,
                topic,
                phase: phase(i, cfg.pubs),
            },
            client_id: format!("bh{}p{i}", cfg.run_id),
            source: source(cfg.subs + i),
        });
    }
    for i in 0..cfg.clients {
        let Some(thread) = mine(i) else { continue };
        threads[thread].push(ConnPlan {
            role: RolePlan::Idle,
            client_id: format!("bh{}c{i}", cfg.run_id),
            source: source(cfg.subs + cfg.pubs + i),
        });
    }
    threads
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Cli, Command};
    use clap::Parser;

    fn cfg(list: &[&str]) -> Config {
        let cli = Cli::try_parse_from(std::iter::once("bench-harness").chain(list.iter().copied()))
            .unwrap();
        match cli.command {
            Command::P2p(a) => Config::resolve(Scenario::P2p, &a).unwrap(),
            Command::Fanin(a) => Config::resolve(Scenario::Fanin, &a).unwrap(),
            Command::Conn(a) => Config::resolve(Scenario::Conn, &a).unwrap(),
            Command::Quiet(a) => Config::resolve(Scenario::Quiet, &a).unwrap(),
            _ => unreachable!(),
        }
    }

    #[test]
    fn every_connection_once_across_workers_and_threads() {
        let c = cfg(&[
            "p2p",
            "--pubs",
            "10",
            "--workers",
            "3",
            "--threads",
            "2",
            "--run-id",
            "7",
        ]);
        let mut ids: Vec<String> = (0..3)
            .flat_map(|w| plan_worker(&c, w))
            .flatten()
            .map(|p| p.client_id)
            .collect();
        assert_eq!(ids.len(), 20);
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 20);
    }

    #[test]
    fn p2p_pairs_share_a_thread_and_topic() {
        let c = cfg(&["p2p", "--pubs", "4", "--threads", "2", "--run-id", "7"]);
        let threads = plan_worker(&c, 0);
        let t0 = &threads[0];
        assert!(
            matches!(&t0[0].role, RolePlan::Sub { filters, expect: Expect::One(0) }
            if filters == &vec!["bh/7/p2p/0".to_string()])
        );
        assert!(t0.iter().any(
            |p| matches!(&p.role, RolePlan::Pub { id: 0, topic, .. } if topic == "bh/7/p2p/0")
        ));
    }

    #[test]
    fn quiet_pairs_are_point_to_point() {
        let c = cfg(&["quiet", "--pubs", "3", "--threads", "1", "--run-id", "7"]);
        let plans = &plan_worker(&c, 0)[0];
        assert_eq!(plans.len(), 6);
        assert!(
            matches!(&plans[2].role, RolePlan::Sub { filters, expect: Expect::One(2) }
            if filters == &vec!["bh/7/quiet/2".to_string()])
        );
        assert!(plans.iter().any(
            |p| matches!(&p.role, RolePlan::Pub { id: 2, topic, .. } if topic == "bh/7/quiet/2")
        ));
    }

    #[test]
    fn shared_fanin_filters() {
        let c = cfg(&[
            "fanin",
            "--pubs",
            "3",
            "--subs",
            "2",
            "--threads",
            "1",
            "--run-id",
            "7",
        ]);
        let plans = &plan_worker(&c, 0)[0];
        assert!(
            matches!(&plans[0].role, RolePlan::Sub { filters, expect: Expect::Shared }
            if filters == &vec!["$share/bench/bh/7/fanin/#".to_string()])
        );
    }

    #[test]
    fn source_addresses_round_robin() {
        let c = cfg(&[
            "conn",
            "--clients",
            "4",
            "--source-ips",
            "2",
            "--threads",
            "1",
        ]);
        let plans = &plan_worker(&c, 0)[0];
        let sources: Vec<_> = plans.iter().map(|p| p.source.unwrap()).collect();
        assert_eq!(
            sources,
            vec![
                Ipv4Addr::new(127, 0, 0, 1),
                Ipv4Addr::new(127, 0, 0, 2),
                Ipv4Addr::new(127, 0, 0, 1),
                Ipv4Addr::new(127, 0, 0, 2)
            ]
        );
    }
}

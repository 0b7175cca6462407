//! `bench-harness`: an MQTT load generator on shardmq's own codec. See `--help` and the
//! bench-harness section of the README.

mod config;
mod engine;
mod output;
mod pacing;
mod payload;
mod perf;
mod plan;
mod report;
mod run;
mod seq;
mod stats;
mod sys;
mod transport;
mod ws;

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

use config::{Cli, Command, Config, Scenario};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (scenario, args) = match cli.command {
        Command::Conn(a) => (Scenario::Conn, a),
        Command::P2p(a) => (Scenario::P2p, a),
        Command::Fanout(a) => (Scenario::Fanout, a),
        Command::Fanin(a) => (Scenario::Fanin, a),
        Command::Latency(a) => (Scenario::Latency, a),
        Command::Quiet(a) => (Scenario::Quiet, a),
        Command::Report(a) => {
            return match report::run(&a) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("bench-harness report: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    };
    let cfg = match Config::resolve(scenario, &args) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("bench-harness: {e}");
            return ExitCode::from(2);
        }
    };
    if cfg.worker_index.is_some() {
        return ExitCode::from(run::child_main(cfg) as u8);
    }
    let outcome = run::run_controller(cfg.clone());
    let (result, latency, connect_latency) = output::build(&cfg, &outcome);
    eprint!("{}", output::table(&cfg, &result));
    if let Some(path) = &cfg.hdr_out {
        let h = if scenario == Scenario::Conn {
            &connect_latency
        } else {
            &latency
        };
        if let Err(e) = output::write_hgrm(h, path) {
            eprintln!("bench-harness: cannot write {}: {e}", path.display());
        }
    }
    let line = serde_json::to_string(&result).expect("RunResult serialises");
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
    if result.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

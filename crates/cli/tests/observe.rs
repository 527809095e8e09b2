//! `plexus observe` against a fake relay and a fake agent on loopback, with real mutual TLS
//! under the cluster's CA (the CLI presents the context's admin certificate): the request it
//! sends for its flags, `-o json` lines that are the relay's FlowResponse lines, compact and
//! table output, the `N/M nodes` tally on stderr naming the unreachable node, `--node` reading
//! one agent directly, and bad flags failing with the flag named before anything is asked.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{Requests, agent_routes, cluster_pki, plexus, relay_routes, serve, server_files};
use plexus_flow::{FlowResponse, PrintOptions, ResponseKind, Verdict, print};
use plexus_test_support::web_view;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observe_asks_the_relay_and_prints_its_flows() {
    let dir = tempfile::tempdir().unwrap();
    let pki = cluster_pki(dir.path());
    tokio::time::timeout(Duration::from_secs(120), async {
        let relay_requests = Requests::default();
        let relay = serve(
            &server_files(&pki, "relay"),
            0,
            relay_routes(relay_requests.clone()),
            relay_requests.clone(),
        )
        .await;
        let agent_requests = Requests::default();
        let agent = serve(
            &server_files(&pki, "agent"),
            0,
            agent_routes(agent_requests.clone()),
            agent_requests.clone(),
        )
        .await;
        let config = dir.path().join("config.yaml");
        common::write_config(&config, dir.path(), &relay.addr, &[("node2", &agent.addr)]);
        let canned: Vec<FlowResponse> = web_view::flow_lines()
            .iter()
            .map(|l| FlowResponse::from_json_line(l).unwrap())
            .collect();
        let tally = "3/4 nodes (unavailable: cluster2/node2: connection refused)";

        // -o json: the relay's lines, each a FlowResponse, as received.
        let run = plexus(
            &config,
            &[
                "observe",
                "--verdict",
                "DROPPED",
                "--to-cluster",
                "cluster1",
                "-o",
                "json",
            ],
        )
        .await;
        assert_eq!(run.code, 0, "{}", run.stderr);
        let printed: Vec<FlowResponse> = run
            .stdout
            .lines()
            .map(|l| FlowResponse::from_json_line(l).unwrap())
            .collect();
        assert_eq!(printed, canned);
        assert!(run.stderr.contains(tally), "{}", run.stderr);
        let req = relay.requests.lock().unwrap().pop().unwrap();
        assert_eq!(req.whitelist.len(), 1, "{req:?}");
        assert_eq!(req.whitelist[0].verdict, [Verdict::Dropped]);
        assert_eq!(req.whitelist[0].destination_cluster_name, ["cluster1"]);
        assert_eq!(req.number, Some(20));
        assert!(!req.follow);

        // Compact: one line per flow and lost events as plexus_flow prints them; the relay's
        // node status only as the tally on stderr.
        let run = plexus(&config, &["observe", "--from-pod", "default/x-wing"]).await;
        assert_eq!(run.code, 0, "{}", run.stderr);
        let expected: String = canned
            .iter()
            .filter(|r| !matches!(r.kind, ResponseKind::NodeStatus(_)))
            .map(|r| print::compact(r, &PrintOptions::default()) + "\n")
            .collect();
        assert_eq!(run.stdout, expected);
        assert!(
            run.stdout.contains("Policy denied DROPPED"),
            "{}",
            run.stdout
        );
        assert_eq!(run.stderr.trim(), tally);

        // A table, with the nodes' names.
        let run = plexus(&config, &["observe", "-o", "table", "--print-node-name"]).await;
        assert_eq!(run.code, 0, "{}", run.stderr);
        let header = run.stdout.lines().next().unwrap();
        assert!(
            header.starts_with("TIMESTAMP") && header.contains("NODE"),
            "{}",
            run.stdout
        );
        assert!(run.stdout.contains("cluster2/node1"), "{}", run.stdout);

        // --not applies to the next flag only, in command-line order.
        let run = plexus(
            &config,
            &[
                "observe",
                "--not",
                "--verdict",
                "FORWARDED",
                "--type",
                "drop",
                "--last",
                "5",
            ],
        )
        .await;
        assert_eq!(run.code, 0, "{}", run.stderr);
        let req = relay.requests.lock().unwrap().pop().unwrap();
        assert_eq!(req.blacklist[0].verdict, [Verdict::Forwarded]);
        assert!(req.blacklist[0].event_type.is_empty());
        assert_eq!(req.whitelist[0].event_type.len(), 1);
        assert_eq!(req.number, Some(5));

        // --node: that node's agent, directly.
        let run = plexus(&config, &["--node", "node2", "observe", "-o", "json"]).await;
        assert_eq!(run.code, 0, "{}", run.stderr);
        assert_eq!(run.stdout.lines().count(), canned.len());
        assert_eq!(agent.requests.lock().unwrap().len(), 1);

        // Following: lines are printed as they come while the stream stays open.
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_plexus"))
            .arg("--config")
            .arg(&config)
            .args(["--node", "node2", "observe", "-f", "-o", "json"])
            .kill_on_drop(true)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(
            child.stdout.take().unwrap(),
        ));
        for want in &canned {
            let line = lines.next_line().await.unwrap().unwrap();
            assert_eq!(&FlowResponse::from_json_line(&line).unwrap(), want);
        }
        assert!(child.try_wait().unwrap().is_none(), "observe -f ended");
        child.kill().await.unwrap();
        let req = agent.requests.lock().unwrap().pop().unwrap();
        assert!(req.follow);
        assert_eq!(req.number, None);

        // Bad flags: refused naming the flag, and nothing is asked.
        let asked = relay.requests.lock().unwrap().len();
        for (args, needle) in [
            (
                vec!["observe", "--from-ip", "10.0.0.300"],
                "--from-ip \"10.0.0.300\"",
            ),
            (vec!["observe", "--verdict", "LOST"], "--verdict \"LOST\""),
            (vec!["observe", "--type", "bogus"], "--type \"bogus\""),
            (
                vec!["observe", "--since", "yesterday"],
                "--since \"yesterday\"",
            ),
            (vec!["observe", "--not", "--not", "--pod", "x"], "--not"),
            (vec!["observe", "--ip", "10.0.0.1", "--pod", "x"], "--ip"),
        ] {
            let run = plexus(&config, &args).await;
            assert_eq!(run.code, 1, "{args:?}: {}", run.stdout);
            assert!(run.stderr.contains(needle), "{args:?}: {}", run.stderr);
        }
        for (args, needle) in [
            (vec!["observe", "-o", "yaml"], "--output"),
            (vec!["observe", "--pod"], "--pod"),
            (vec!["observe", "--from-pods", "x"], "--from-pods"),
        ] {
            let run = plexus(&config, &args).await;
            assert_eq!(run.code, 2, "{args:?}: {}", run.stdout);
            assert!(run.stderr.contains(needle), "{args:?}: {}", run.stderr);
        }
        assert_eq!(relay.requests.lock().unwrap().len(), asked);

        // A relay that does not answer: the error says which.
        relay.stop().await;
        let run = plexus(&config, &["observe"]).await;
        assert_eq!(run.code, 1);
        assert!(
            run.stderr.contains("the relay of context cluster1"),
            "{}",
            run.stderr
        );
    })
    .await
    .unwrap();
}

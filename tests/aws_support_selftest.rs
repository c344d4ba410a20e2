//! Self-test of the AWS-side test support in `tests/support/`: a private
//! moto server ([`Moto`]), the IMDSv2 emulator ([`Imds`]), the recording
//! lifecycle proxy ([`LifecycleProxy`]) and the basic-auth registry
//! ([`AuthRegistry`]). Real servers, the real Rust SDK, real outcomes.

mod support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use aws_config::imds::client::Client as ImdsClient;
use aws_sdk_autoscaling::error::{DisplayErrorContext, ProvideErrorMetadata};
use aws_sdk_autoscaling::types::LifecycleState;
use base64::Engine;
use base64::prelude::BASE64_STANDARD;

use support::*;

const LAUNCHING: &str = "autoscaling:EC2_INSTANCE_LAUNCHING";
const TERMINATING: &str = "autoscaling:EC2_INSTANCE_TERMINATING";

fn asg_client(endpoint_url: &str) -> aws_sdk_autoscaling::Client {
    aws_sdk_autoscaling::Client::new(&sdk_config_for(endpoint_url))
}

/// `(instance id, lifecycle state)` of every member of every group, as
/// `DescribeAutoScalingInstances` at `endpoint_url` reports them.
async fn asg_instance_states(endpoint_url: &str) -> BTreeMap<String, String> {
    let out = asg_client(endpoint_url)
        .describe_auto_scaling_instances()
        .send()
        .await
        .unwrap_or_else(|e| panic!("DescribeAutoScalingInstances: {}", DisplayErrorContext(&e)));
    out.auto_scaling_instances()
        .iter()
        .map(|i| {
            (
                i.instance_id().unwrap_or_default().to_string(),
                i.lifecycle_state().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// The same, from the `Instances` of `DescribeAutoScalingGroups(group)`.
async fn group_member_states(endpoint_url: &str, group: &str) -> BTreeMap<String, String> {
    let out = asg_client(endpoint_url)
        .describe_auto_scaling_groups()
        .auto_scaling_group_names(group)
        .send()
        .await
        .unwrap_or_else(|e| panic!("DescribeAutoScalingGroups: {}", DisplayErrorContext(&e)));
    let g = out
        .auto_scaling_groups()
        .first()
        .unwrap_or_else(|| panic!("group {group} not found"));
    g.instances()
        .iter()
        .map(|i| {
            (
                i.instance_id().unwrap_or_default().to_string(),
                i.lifecycle_state()
                    .map(|s| s.as_str().to_string())
                    .unwrap_or_default(),
            )
        })
        .collect()
}

#[test]
fn moto_groups_tags_health_hooks_and_reset() {
    let t0 = Instant::now();
    let moto = Moto::start();
    eprintln!("moto started in {:.2?}", t0.elapsed());

    let env: BTreeMap<String, String> = moto.env().into_iter().collect();
    assert_eq!(env["AWS_ENDPOINT_URL"], moto.url());
    assert_eq!(env["AWS_REGION"], "us-east-1");
    assert_eq!(env["AWS_ACCESS_KEY_ID"], "test");
    assert_eq!(env["AWS_SECRET_ACCESS_KEY"], "test");
    assert_eq!(env["AWS_MAX_ATTEMPTS"], "2");
    assert!(!env.contains_key("AWS_EC2_METADATA_DISABLED"));
    assert_eq!(env_refs(&moto.env()).len(), env.len());

    let group = unique("grp");
    let t1 = Instant::now();
    let ids = moto.create_group(&group, 2, &[("berth:manifest", "m1"), ("team", "core")]);
    eprintln!("create_group (first AWS calls) took {:.2?}", t1.elapsed());
    assert_eq!(ids.len(), 2, "{ids:?}");
    assert!(ids.iter().all(|i| i.starts_with("i-")), "{ids:?}");
    assert_eq!(moto.group_instance_ids(&group), ids);

    // Group tags: create, merge-update, delete.
    let tags = moto.group_tags(&group);
    assert_eq!(tags.get("berth:manifest").map(String::as_str), Some("m1"));
    assert_eq!(tags.get("team").map(String::as_str), Some("core"));
    moto.set_group_tags(&group, &[("berth:manifest", "m2"), ("extra", "x")]);
    let tags = moto.group_tags(&group);
    assert_eq!(tags.get("berth:manifest").map(String::as_str), Some("m2"));
    assert_eq!(tags.get("team").map(String::as_str), Some("core"));
    assert_eq!(tags.get("extra").map(String::as_str), Some("x"));
    moto.delete_group_tag(&group, "team");
    let tags = moto.group_tags(&group);
    assert!(!tags.contains_key("team"), "{tags:?}");
    assert_eq!(tags.len(), 2, "{tags:?}");

    // Instance tags: moto's own, plus ones we set; group tags do not propagate.
    let itags = moto.instance_tags(&ids[0]);
    assert_eq!(
        itags.get("aws:autoscaling:groupName").map(String::as_str),
        Some(group.as_str()),
        "{itags:?}"
    );
    assert!(!itags.contains_key("berth:manifest"), "{itags:?}");
    moto.set_instance_tag(&ids[0], "berth:drift", "yes");
    assert_eq!(
        moto.instance_tags(&ids[0])
            .get("berth:drift")
            .map(String::as_str),
        Some("yes")
    );
    assert!(!moto.instance_tags(&ids[1]).contains_key("berth:drift"));

    // The instances really exist in EC2, from the AMI, in us-east-1a.
    let cfg = moto.sdk_config();
    let described = block_on(async {
        aws_sdk_ec2::Client::new(&cfg)
            .describe_instances()
            .instance_ids(&ids[0])
            .send()
            .await
            .unwrap_or_else(|e| panic!("DescribeInstances: {}", DisplayErrorContext(&e)))
    });
    let inst = &described.reservations()[0].instances()[0];
    assert_eq!(inst.image_id(), Some(MOTO_AMI));
    assert_eq!(
        inst.placement().and_then(|p| p.availability_zone()),
        Some(MOTO_AZ)
    );

    // Health: SetInstanceHealth (what berth does) only flips HealthStatus.
    assert_eq!(moto.instance_health(&group, &ids[0]), "Healthy");
    assert_eq!(moto.instance_lifecycle_state(&group, &ids[0]), "InService");
    block_on(async {
        aws_sdk_autoscaling::Client::new(&cfg)
            .set_instance_health()
            .instance_id(&ids[0])
            .health_status("Unhealthy")
            .should_respect_grace_period(false)
            .send()
            .await
            .unwrap_or_else(|e| panic!("SetInstanceHealth: {}", DisplayErrorContext(&e)));
    });
    assert_eq!(moto.instance_health(&group, &ids[0]), "Unhealthy");
    assert_eq!(moto.instance_health(&group, &ids[1]), "Healthy");
    assert_eq!(
        moto.group_instance_ids(&group),
        ids,
        "moto replaced nothing"
    );
    let listed = moto.group_instances(&group);
    assert_eq!(
        listed
            .iter()
            .map(|i| (
                i.id.as_str(),
                i.lifecycle_state.as_str(),
                i.health_status.as_str()
            ))
            .collect::<Vec<_>>(),
        vec![
            (ids[0].as_str(), "InService", "Unhealthy"),
            (ids[1].as_str(), "InService", "Healthy"),
        ]
    );
    // What the fleet harness replaces it with: terminated and replaced in
    // one call, the group's size kept.
    let launched = moto.launch_times(&ids);
    assert_eq!(launched.len(), 2, "{launched:?}");
    moto.terminate_in_group(&ids[0], false).unwrap();
    let after = moto.group_instance_ids(&group);
    assert_eq!(after.len(), 2, "{after:?}");
    assert!(
        !after.contains(&ids[0]) && after.contains(&ids[1]),
        "{after:?}"
    );
    let new = after.iter().find(|i| **i != ids[1]).unwrap();
    assert_eq!(moto.instance_health(&group, new), "Healthy");
    assert!(moto.launch_times(&[new])[new] >= launched[&ids[1]]);
    assert!(
        moto.terminate_in_group(&ids[0], false).is_err(),
        "no member any more"
    );

    // Lifecycle hooks.
    moto.put_lifecycle_hook(&group, "launch-hook", LAUNCHING, 120);
    moto.put_lifecycle_hook(&group, "term-hook", TERMINATING, 300);
    let hooks = block_on(async {
        aws_sdk_autoscaling::Client::new(&cfg)
            .describe_lifecycle_hooks()
            .auto_scaling_group_name(&group)
            .send()
            .await
            .unwrap_or_else(|e| panic!("DescribeLifecycleHooks: {}", DisplayErrorContext(&e)))
    });
    let hooks: BTreeMap<String, (String, Option<i32>, String)> = hooks
        .lifecycle_hooks()
        .iter()
        .map(|h| {
            (
                h.lifecycle_hook_name().unwrap_or_default().to_string(),
                (
                    h.lifecycle_transition().unwrap_or_default().to_string(),
                    h.heartbeat_timeout(),
                    h.default_result().unwrap_or_default().to_string(),
                ),
            )
        })
        .collect();
    assert_eq!(
        hooks["launch-hook"],
        (LAUNCHING.to_string(), Some(120), "ABANDON".to_string())
    );
    assert_eq!(hooks["term-hook"].0, TERMINATING);
    assert_eq!(hooks["term-hook"].1, Some(300));

    // ECR: the token berth will turn into registry credentials.
    let token = block_on(async {
        aws_sdk_ecr::Client::new(&cfg)
            .get_authorization_token()
            .send()
            .await
            .unwrap_or_else(|e| panic!("GetAuthorizationToken: {}", DisplayErrorContext(&e)))
    });
    let data = &token.authorization_data()[0];
    let decoded = BASE64_STANDARD
        .decode(data.authorization_token().expect("a token"))
        .expect("the token is base64");
    assert_eq!(
        String::from_utf8_lossy(&decoded),
        format!("{MOTO_ECR_USER}:{MOTO_ECR_PASSWORD}")
    );

    // reset() forgets everything.
    moto.reset();
    let groups = block_on(async {
        aws_sdk_autoscaling::Client::new(&cfg)
            .describe_auto_scaling_groups()
            .send()
            .await
            .unwrap_or_else(|e| panic!("DescribeAutoScalingGroups: {}", DisplayErrorContext(&e)))
    });
    assert!(groups.auto_scaling_groups().is_empty(), "{groups:?}");
    eprintln!("moto test total {:.2?}", t0.elapsed());
}

#[test]
fn moto_servers_are_private_and_die_on_drop() {
    let a = Moto::start();
    let b = Moto::start();
    assert_ne!(a.port(), b.port());
    let group = unique("only-in-a");
    a.create_group(&group, 1, &[]);
    let in_b = block_on(async {
        asg_client(&b.url())
            .describe_auto_scaling_groups()
            .auto_scaling_group_names(&group)
            .send()
            .await
            .unwrap_or_else(|e| panic!("DescribeAutoScalingGroups: {}", DisplayErrorContext(&e)))
    });
    assert!(in_b.auto_scaling_groups().is_empty());
    let addr = format!("127.0.0.1:{}", a.port());
    drop(a);
    wait_until(
        "the dropped moto to stop listening",
        Duration::from_secs(10),
        || TcpStream::connect(&addr).is_err().then_some(()),
    );
}

/// The secret stores as berth reads them: the quirks `support::moto`
/// documents for `GetParameters` and `BatchGetSecretValue`, and what
/// `put_parameter` and `put_secret` leave there.
#[test]
fn moto_parameters_and_secrets_for_the_secret_stores() {
    let moto = Moto::start();
    moto.put_parameter("/berth/t/secure", "v-secure", true);
    moto.put_parameter("/berth/t/plain", "v-plain", false);
    let arn = moto.put_secret("berth/t/json", r#"{"k":"v-json"}"#);
    assert!(
        arn.starts_with("arn:aws:secretsmanager:us-east-1:123456789012:secret:berth/t/json-"),
        "{arn}"
    );
    assert_eq!(
        moto.put_secret("berth/t/json", "v-new"),
        arn,
        "a new value, same secret"
    );
    let cfg = moto.sdk_config();
    block_on(async move {
        let ssm = aws_sdk_ssm::Client::new(&cfg);
        let out = ssm
            .get_parameters()
            .names("/berth/t/secure")
            .names("/berth/t/plain")
            .names("/berth/t/missing")
            .with_decryption(true)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GetParameters: {}", DisplayErrorContext(&e)));
        let mut got: Vec<(&str, &str)> = out
            .parameters()
            .iter()
            .map(|p| (p.name().unwrap(), p.value().unwrap()))
            .collect();
        got.sort();
        assert_eq!(
            got,
            [
                ("/berth/t/plain", "v-plain"),
                ("/berth/t/secure", "v-secure")
            ]
        );
        assert_eq!(out.invalid_parameters(), ["/berth/t/missing"]);
        let eleven: Vec<String> = (0..11).map(|i| format!("/berth/t/p{i}")).collect();
        let e = ssm
            .get_parameters()
            .set_names(Some(eleven))
            .send()
            .await
            .expect_err("more than 10 names");
        assert_eq!(
            e.code(),
            Some("ValidationException"),
            "{}",
            DisplayErrorContext(&e)
        );
        let sm = aws_sdk_secretsmanager::Client::new(&cfg);
        let out = sm
            .batch_get_secret_value()
            .secret_id_list("berth/t/json")
            .secret_id_list("berth/t/missing")
            .send()
            .await
            .unwrap_or_else(|e| panic!("BatchGetSecretValue: {}", DisplayErrorContext(&e)));
        let values: Vec<(&str, &str)> = out
            .secret_values()
            .iter()
            .map(|v| (v.name().unwrap(), v.secret_string().unwrap()))
            .collect();
        assert_eq!(values, [("berth/t/json", "v-new")]);
        let errors: Vec<(&str, &str)> = out
            .errors()
            .iter()
            .map(|e| (e.secret_id().unwrap(), e.error_code().unwrap()))
            .collect();
        assert_eq!(errors, [("berth/t/missing", "ResourceNotFoundException")]);
        assert_eq!(out.next_token(), None);
    });
}

fn imds_with_tags() -> Imds {
    Imds::start(ImdsConfig {
        instance_id: "i-0abc123def4567890".into(),
        region: "us-east-1".into(),
        az: "us-east-1a".into(),
        tags: BTreeMap::from([
            ("Name".to_string(), "web-1".to_string()),
            ("berth:manifest".to_string(), "s3://b/m.toml".to_string()),
        ]),
        tags_enabled: false,
        live_tags_from: None,
    })
}

#[tokio::test]
async fn imds_serves_metadata_to_the_sdk_client() {
    let imds = imds_with_tags();
    let client = ImdsClient::builder()
        .endpoint(imds.url())
        .expect("a valid IMDS endpoint")
        .max_attempts(2)
        .build();
    let get = |path: &'static str| {
        let client = client.clone();
        async move { client.get(path).await.map(|s| s.as_ref().to_string()) }
    };
    assert_eq!(
        get("/latest/meta-data/instance-id")
            .await
            .expect("instance-id"),
        "i-0abc123def4567890"
    );
    assert_eq!(
        get("/latest/meta-data/instance-type").await.expect("type"),
        "t3.micro"
    );
    assert_eq!(
        get("/latest/meta-data/placement/region")
            .await
            .expect("region"),
        "us-east-1"
    );
    assert_eq!(
        get("/latest/meta-data/placement/availability-zone")
            .await
            .expect("az"),
        "us-east-1a"
    );
    let doc = get("/latest/dynamic/instance-identity/document")
        .await
        .expect("identity document");
    let doc: serde_json::Value = serde_json::from_str(&doc).expect("the document is JSON");
    assert_eq!(doc["instanceId"], "i-0abc123def4567890");
    assert_eq!(doc["accountId"], "123456789012");

    // Lifecycle state, settable while the client runs.
    let lifecycle = "/latest/meta-data/autoscaling/target-lifecycle-state";
    assert_eq!(get(lifecycle).await.expect("lifecycle"), "InService");
    imds.set_target_lifecycle_state("Terminated");
    assert_eq!(get(lifecycle).await.expect("lifecycle"), "Terminated");

    // Spot interruption notice: 404 until set.
    let spot = "/latest/meta-data/spot/instance-action";
    let err = get(spot).await.expect_err("no spot action yet");
    assert!(format!("{err:?}").contains("404"), "{err:?}");
    let action = r#"{"action":"terminate","time":"2026-01-01T00:00:00Z"}"#;
    imds.set_spot_action(Some(action));
    assert_eq!(get(spot).await.expect("spot action"), action);
    imds.set_spot_action(None);
    get(spot).await.expect_err("spot action cleared");
    assert_eq!(imds.gets(spot), 3);

    // Tags: 404 while disabled, then keys and values.
    get("/latest/meta-data/tags/instance")
        .await
        .expect_err("tags disabled");
    imds.set_tags_enabled(true);
    assert_eq!(
        get("/latest/meta-data/tags/instance").await.expect("keys"),
        "Name\nberth:manifest"
    );
    assert_eq!(
        get("/latest/meta-data/tags/instance/berth:manifest")
            .await
            .expect("tag value"),
        "s3://b/m.toml"
    );
    imds.set_tag("berth:manifest", "s3://b/v2.toml");
    assert_eq!(
        get("/latest/meta-data/tags/instance/berth:manifest")
            .await
            .expect("tag value"),
        "s3://b/v2.toml"
    );

    // No instance role: the SDK falls back to other credential sources.
    get("/latest/meta-data/iam/security-credentials/")
        .await
        .expect_err("no role");

    // The client fetched a token once and never fell back to IMDSv1.
    assert_eq!(imds.token_puts(), 1);
    assert_eq!(imds.requests_without_token(), 0);

    // Revoked tokens: the SDK client keeps its cached token (it only
    // refreshes by its own TTL bookkeeping), so it fails with 401 after its
    // retries; a fresh client fetches a new token and works.
    imds.expire_tokens();
    let err = get("/latest/meta-data/instance-id")
        .await
        .expect_err("the cached token was revoked");
    assert!(format!("{err:?}").contains("401"), "{err:?}");
    assert!(imds.rejected_tokens() >= 1);
    assert_eq!(imds.token_puts(), 1);
    let fresh = ImdsClient::builder()
        .endpoint(imds.url())
        .expect("a valid IMDS endpoint")
        .build();
    assert_eq!(
        fresh
            .get("/latest/meta-data/instance-id")
            .await
            .expect("a fresh client")
            .as_ref(),
        "i-0abc123def4567890"
    );
    assert_eq!(imds.token_puts(), 2);
    assert_eq!(imds.requests_without_token(), 0);
}

/// Writes one raw request on `stream` and reads one response (by its
/// Content-Length), leaving the connection open.
fn exchange(stream: &mut TcpStream, request: &str) -> (u16, Vec<(String, String)>, String) {
    stream
        .write_all(request.as_bytes())
        .expect("write a raw request");
    let mut reader = BufReader::new(stream.try_clone().expect("clone the stream"));
    let mut status_line = String::new();
    reader
        .read_line(&mut status_line)
        .expect("read the status line");
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).expect("read a header line");
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (k, v) = line.split_once(':').expect("a header line has a colon");
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .map(|(_, v)| v.parse().expect("numeric content-length"))
        .expect("every response has a Content-Length");
    let mut body = vec![0; len];
    reader.read_exact(&mut body).expect("read the body");
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

#[test]
fn imds_enforces_imdsv2_over_raw_http() {
    let imds = imds_with_tags();
    let addr = format!("127.0.0.1:{}", imds.port());
    let id_path = "/latest/meta-data/instance-id";

    // IMDSv1-style GET: refused.
    let (status, _) = http_get(&addr, id_path).expect("IMDS answers");
    assert_eq!(status, 401);
    assert_eq!(imds.requests_without_token(), 1);

    // Token PUT needs a TTL header in 1..=21600, and no X-Forwarded-For.
    let put = |headers: &[(&str, &str)]| {
        http_request(&addr, "PUT", "/latest/api/token", headers, b"").expect("IMDS answers")
    };
    assert_eq!(put(&[]).status, 400);
    let ttl = "X-aws-ec2-metadata-token-ttl-seconds";
    assert_eq!(put(&[(ttl, "0")]).status, 400);
    assert_eq!(put(&[(ttl, "21601")]).status, 400);
    assert_eq!(put(&[(ttl, "soon")]).status, 400);
    assert_eq!(
        put(&[(ttl, "60"), ("X-Forwarded-For", "10.0.0.1")]).status,
        403
    );
    let ok = put(&[(ttl, "60")]);
    assert_eq!(ok.status, 200);
    assert_eq!(ok.header(ttl), Some("60"));
    let token = ok.text();
    assert!(token.len() > 20, "{token:?}");
    assert_eq!(imds.token_puts(), 6);

    let get = |path: &str, token: &str| {
        http_request(
            &addr,
            "GET",
            path,
            &[("X-aws-ec2-metadata-token", token)],
            b"",
        )
        .expect("IMDS answers")
    };
    let r = get(id_path, &token);
    assert_eq!((r.status, r.text().as_str()), (200, "i-0abc123def4567890"));
    assert_eq!(get(id_path, "not-a-token").status, 401);
    assert_eq!(get("/latest/meta-data/nonexistent", &token).status, 404);
    assert_eq!(
        http_request(&addr, "POST", id_path, &[], b"").map(|r| r.status),
        Some(405)
    );

    // Tags follow the flag at run time.
    let tag = "/latest/meta-data/tags/instance/Name";
    assert_eq!(get(tag, &token).status, 404);
    imds.set_tags_enabled(true);
    let r = get(tag, &token);
    assert_eq!((r.status, r.text().as_str()), (200, "web-1"));
    assert_eq!(
        get("/latest/meta-data/tags/instance/Missing", &token).status,
        404
    );
    imds.remove_tag("Name");
    assert_eq!(get(tag, &token).status, 404);
    imds.set_tags_enabled(false);
    assert_eq!(get("/latest/meta-data/tags/instance", &token).status, 404);

    // Keep-alive: several requests on one connection, then an explicit close.
    let mut conn = TcpStream::connect(&addr).expect("connect to IMDS");
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("set a read timeout");
    let (status, headers, fresh) = exchange(
        &mut conn,
        &format!("PUT /latest/api/token HTTP/1.1\r\nHost: {addr}\r\n{ttl}: 30\r\n\r\n"),
    );
    assert_eq!(status, 200);
    assert!(
        headers
            .iter()
            .any(|(k, v)| k == &ttl.to_ascii_lowercase() && v == "30")
    );
    let (status, _, body) = exchange(
        &mut conn,
        &format!(
            "GET /latest/meta-data/placement/region HTTP/1.1\r\nHost: {addr}\r\n\
             X-aws-ec2-metadata-token: {fresh}\r\n\r\n"
        ),
    );
    assert_eq!((status, body.as_str()), (200, "us-east-1"));
    let (status, headers, _) = exchange(
        &mut conn,
        &format!(
            "GET {id_path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
             X-aws-ec2-metadata-token: {fresh}\r\n\r\n"
        ),
    );
    assert_eq!(status, 200);
    assert!(
        headers
            .iter()
            .any(|(k, v)| k == "connection" && v == "close")
    );
    let mut rest = Vec::new();
    conn.read_to_end(&mut rest)
        .expect("the server closes the connection");
    assert!(rest.is_empty());

    // Dropping the emulator stops it.
    drop(imds);
    wait_until(
        "the dropped IMDS to stop listening",
        Duration::from_secs(10),
        || TcpStream::connect(&addr).is_err().then_some(()),
    );
}

#[test]
fn proxy_forwards_and_records_lifecycle_actions() {
    let moto = Moto::start();
    let group = unique("proxied");
    let ids = moto.create_group(&group, 1, &[("berth:manifest", "m")]);
    moto.put_lifecycle_hook(&group, "launch", LAUNCHING, 60);
    let proxy = LifecycleProxy::start(&moto.url());
    assert_eq!(proxy.env()[0].0, "AWS_ENDPOINT_URL_AUTO_SCALING");
    assert_eq!(proxy.env()[0].1, proxy.url());

    block_on(async {
        // Forwarding: the group as moto has it.
        let members = group_member_states(&proxy.url(), &group).await;
        assert_eq!(
            members,
            BTreeMap::from([(ids[0].clone(), "InService".to_string())])
        );
        assert_eq!(proxy.count("DescribeAutoScalingGroups"), 1);

        // The gap the proxy fills: moto itself fails these actions.
        let direct = asg_client(&moto.url())
            .complete_lifecycle_action()
            .auto_scaling_group_name(&group)
            .lifecycle_hook_name("launch")
            .instance_id(&ids[0])
            .lifecycle_action_result("CONTINUE")
            .send()
            .await;
        assert!(
            direct.is_err(),
            "moto grew CompleteLifecycleAction: {direct:?}"
        );

        let client = asg_client(&proxy.url());
        client
            .record_lifecycle_action_heartbeat()
            .auto_scaling_group_name(&group)
            .lifecycle_hook_name("launch")
            .instance_id(&ids[0])
            .send()
            .await
            .unwrap_or_else(|e| panic!("heartbeat via proxy: {}", DisplayErrorContext(&e)));
        client
            .complete_lifecycle_action()
            .auto_scaling_group_name(&group)
            .lifecycle_hook_name("launch")
            .instance_id(&ids[0])
            .lifecycle_action_result("CONTINUE")
            .send()
            .await
            .unwrap_or_else(|e| panic!("complete via proxy: {}", DisplayErrorContext(&e)));
    });

    let calls = proxy.calls();
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert_eq!(calls[0].action, "RecordLifecycleActionHeartbeat");
    assert_eq!(calls[1].action, "CompleteLifecycleAction");
    assert_eq!(calls[1].param("AutoScalingGroupName"), Some(group.as_str()));
    assert_eq!(calls[1].param("LifecycleHookName"), Some("launch"));
    assert_eq!(calls[1].param("InstanceId"), Some(ids[0].as_str()));
    assert_eq!(calls[1].param("LifecycleActionResult"), Some("CONTINUE"));
    assert_eq!(calls[1].param("Version"), Some("2011-01-01"));
    assert_eq!(proxy.calls_of("CompleteLifecycleAction").len(), 1);
    assert_eq!(proxy.count("CompleteLifecycleAction"), 1);
    assert!(!proxy.is_abandoned(&ids[0]));

    // Missing parameters get AWS's ValidationError and are not recorded.
    let addr = format!("127.0.0.1:{}", proxy.port());
    let form = format!(
        "Action=CompleteLifecycleAction&Version=2011-01-01&AutoScalingGroupName={group}\
         &LifecycleHookName=launch&InstanceId={}",
        ids[0]
    );
    let r = http_request(
        &addr,
        "POST",
        "/",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        form.as_bytes(),
    )
    .expect("the proxy answers");
    assert_eq!(r.status, 400);
    assert!(
        r.text().contains("<Code>ValidationError</Code>"),
        "{}",
        r.text()
    );
    assert_eq!(proxy.calls().len(), 2);
    assert_eq!(proxy.count("CompleteLifecycleAction"), 2);

    // Non-AWS paths are forwarded too.
    let r = http_request(&addr, "GET", "/moto-api/", &[], b"").expect("the proxy answers");
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn proxy_holds_instances_in_pending_wait() {
    let moto = Moto::start();
    let group = unique("held");
    let ids = moto.create_group(&group, 2, &[]);
    let proxy = LifecycleProxy::start(&moto.url());
    proxy.hold_pending_wait(&ids[0]);
    assert!(proxy.is_held(&ids[0]));
    assert!(!proxy.is_held(&ids[1]));

    let through_proxy = asg_instance_states(&proxy.url()).await;
    assert_eq!(through_proxy[&ids[0]], "Pending:Wait");
    assert_eq!(through_proxy[&ids[1]], "InService");
    let members = group_member_states(&proxy.url(), &group).await;
    assert_eq!(members[&ids[0]], "Pending:Wait");
    assert_eq!(members[&ids[1]], "InService");
    // The SDK parses it into the real enum variant.
    let out = asg_client(&proxy.url())
        .describe_auto_scaling_instances()
        .instance_ids(&ids[0])
        .send()
        .await
        .unwrap_or_else(|e| panic!("DescribeAutoScalingInstances: {}", DisplayErrorContext(&e)));
    assert_eq!(
        out.auto_scaling_instances()[0].lifecycle_state(),
        Some("Pending:Wait")
    );
    assert_eq!(
        LifecycleState::from("Pending:Wait"),
        LifecycleState::PendingWait
    );
    // moto itself is untouched.
    assert_eq!(asg_instance_states(&moto.url()).await[&ids[0]], "InService");
    // The sync helpers work inside a tokio runtime too.
    assert_eq!(moto.instance_lifecycle_state(&group, &ids[0]), "InService");

    let complete = |id: String, result: &'static str| {
        let client = asg_client(&proxy.url());
        let group = group.clone();
        async move {
            client
                .complete_lifecycle_action()
                .auto_scaling_group_name(group)
                .lifecycle_hook_name("launch")
                .instance_id(id)
                .lifecycle_action_result(result)
                .send()
                .await
                .unwrap_or_else(|e| panic!("complete: {}", DisplayErrorContext(&e)))
        }
    };
    complete(ids[0].clone(), "CONTINUE").await;
    assert!(!proxy.is_held(&ids[0]));
    assert!(!proxy.is_abandoned(&ids[0]));
    assert_eq!(
        asg_instance_states(&proxy.url()).await[&ids[0]],
        "InService"
    );

    proxy.hold_pending_wait(&ids[1]);
    assert_eq!(
        group_member_states(&proxy.url(), &group).await[&ids[1]],
        "Pending:Wait"
    );
    complete(ids[1].clone(), "ABANDON").await;
    assert!(!proxy.is_held(&ids[1]));
    assert!(proxy.is_abandoned(&ids[1]));
    assert_eq!(
        group_member_states(&proxy.url(), &group).await[&ids[1]],
        "InService"
    );
    assert_eq!(proxy.calls_of("CompleteLifecycleAction").len(), 2);
}

#[test]
fn proxy_faults_throttle_and_unavailable() {
    let moto = Moto::start();
    let group = unique("faulty");
    moto.create_group(&group, 1, &[]);
    let proxy = LifecycleProxy::start(&moto.url());
    let describe = || {
        block_on(async {
            asg_client(&proxy.url())
                .describe_auto_scaling_groups()
                .auto_scaling_group_names(&group)
                .send()
                .await
                .map_err(Box::new)
        })
    };
    assert_eq!(describe().expect("no fault").auto_scaling_groups().len(), 1);

    proxy.set_fault(Fault::Throttle);
    let t = Instant::now();
    let err = describe().expect_err("throttled");
    eprintln!(
        "throttled call (2 attempts) failed after {:.2?}",
        t.elapsed()
    );
    assert_eq!(
        err.code(),
        Some("Throttling"),
        "{}",
        DisplayErrorContext(&err)
    );
    assert_eq!(err.message(), Some("Rate exceeded"));
    // AWS_MAX_ATTEMPTS=2 semantics: one retry.
    assert_eq!(proxy.count("DescribeAutoScalingGroups"), 3);
    // A lifecycle action is refused too, and not recorded.
    let addr = format!("127.0.0.1:{}", proxy.port());
    let r = http_request(
        &addr,
        "POST",
        "/",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        b"Action=CompleteLifecycleAction&AutoScalingGroupName=g&LifecycleHookName=h\
          &InstanceId=i-1&LifecycleActionResult=CONTINUE",
    )
    .expect("the proxy answers");
    assert_eq!(r.status, 400);
    assert!(r.text().contains("<Code>Throttling</Code>"), "{}", r.text());
    assert!(proxy.calls().is_empty());

    proxy.set_fault(Fault::Unavailable);
    let err = describe().expect_err("unavailable");
    let raw = err.raw_response().map(|r| r.status().as_u16());
    assert_eq!(raw, Some(503), "{}", DisplayErrorContext(&err));
    assert_eq!(proxy.count("DescribeAutoScalingGroups"), 5);
    let r = http_request(&addr, "GET", "/moto-api/", &[], b"").expect("the proxy answers");
    assert_eq!(r.status, 503);

    proxy.set_fault(Fault::None);
    assert_eq!(
        describe().expect("recovered").auto_scaling_groups().len(),
        1
    );
}

#[test]
fn auth_registry_refuses_anonymous_pulls() {
    let reg = AuthRegistry::start(MOTO_ECR_USER, MOTO_ECR_PASSWORD);
    let addr = reg.addr();

    // The registry API itself.
    let anon = http_request(&addr, "GET", "/v2/", &[], b"").expect("registry answers");
    assert_eq!(anon.status, 401);
    assert!(
        anon.header("www-authenticate")
            .is_some_and(|v| v.starts_with("Basic")),
        "{:?}",
        anon.headers
    );
    let auth = reg.authorization();
    let ok = http_request(&addr, "GET", "/v2/", &[("Authorization", &auth)], b"")
        .expect("registry answers");
    assert_eq!(ok.status, 200);
    let wrong = basic_auth(MOTO_ECR_USER, "wrong");
    let bad = http_request(&addr, "GET", "/v2/", &[("Authorization", &wrong)], b"")
        .expect("registry answers");
    assert_eq!(bad.status, 401);

    // Docker: push with credentials, anonymous and wrong pulls fail, a pull
    // with credentials works.
    let repo = unique("private");
    let t = Instant::now();
    let reference = reg.push_image(&repo, "v1");
    eprintln!("authenticated push took {:.2?}", t.elapsed());
    assert_eq!(reference, format!("{addr}/{repo}:v1"));
    assert!(!image_exists(&reference), "the local tag was removed");

    let empty = tempfile::tempdir().expect("an empty docker config dir");
    let empty_dir = empty.path().to_str().expect("UTF-8 temp path");
    let err = docker_ok(&["--config", empty_dir, "pull", &reference])
        .expect_err("an anonymous pull must fail");
    assert!(
        err.contains("no basic auth credentials") || err.to_lowercase().contains("unauthorized"),
        "{err}"
    );
    let wrong_cfg = docker_config_with_auth(&addr, MOTO_ECR_USER, "wrong");
    let wrong_dir = wrong_cfg.path().to_str().expect("UTF-8 temp path");
    let err = docker_ok(&["--config", wrong_dir, "pull", &reference])
        .expect_err("a pull with a wrong password must fail");
    assert!(err.to_lowercase().contains("unauthorized"), "{err}");
    assert!(!image_exists(&reference));

    let good_cfg = docker_config_with_auth(&addr, reg.user(), reg.password());
    let good_dir = good_cfg.path().to_str().expect("UTF-8 temp path");
    docker(&["--config", good_dir, "pull", &reference]);
    assert!(image_exists(&reference));
    docker(&["image", "rm", &reference]);

    let catalog = http_request(
        &addr,
        "GET",
        "/v2/_catalog",
        &[("Authorization", &auth)],
        b"",
    )
    .expect("registry answers");
    assert!(catalog.text().contains(&repo), "{}", catalog.text());
}

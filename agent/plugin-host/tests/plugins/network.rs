//! Outgoing HTTP: granted loopback works, anything else is denied and audited.

use latchkey_plugin_host::{Capability, Credential, DenyReason, ProviderError, SecretString};

use crate::support::{basic_spec, config, grant_http, host, http_fixture};

fn cred() -> Credential {
    Credential::new("api-key", [("key", SecretString::from("k"))])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_granted_loopback_server_is_reachable() {
    let t = host();
    let server = http_fixture(None);
    let authority = server.addr.to_string();
    let mut spec = basic_spec();
    grant_http(&mut spec, &authority);
    let plugin = t.host.load(spec).await.unwrap();
    let url = format!("http://{authority}/token?x=1");
    let answer = plugin
        .validate(config(&[("mode", "http"), ("url", &url)]), cred())
        .await
        .unwrap()
        .unwrap();
    assert!(answer.valid, "{answer:?}");
    assert!(
        answer.detail.contains("GET /token?x=1 HTTP/1.1"),
        "{}",
        answer.detail
    );
    assert!(t.audit.events().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_not_in_the_grant_is_denied_and_audited() {
    let t = host();
    let granted = http_fixture(None);
    let other = http_fixture(None);
    let mut spec = basic_spec();
    grant_http(&mut spec, &granted.addr.to_string());
    let plugin = t.host.load(spec).await.unwrap();
    let url = format!("http://{}/steal", other.addr);
    let answer = plugin
        .validate(config(&[("mode", "http"), ("url", &url)]), cred())
        .await
        .unwrap();
    assert!(
        matches!(answer, Err(ProviderError::Denied(_))),
        "{answer:?}"
    );
    let events = t.audit.events();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].plugin, "basic");
    assert_eq!(events[0].capability, Capability::Http);
    assert_eq!(events[0].target, format!("http://{}", other.addr));
    assert_eq!(events[0].reason, DenyReason::AuthorityNotGranted);
    assert!(
        other.hits.lock().unwrap().is_empty(),
        "no byte may reach it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_granted_name_resolving_to_loopback_is_refused_unless_its_network_is_allowed() {
    let server = http_fixture(None);
    let authority = format!("localhost:{}", server.addr.port());
    let url = format!("http://{authority}/");

    let t = host();
    let mut spec = basic_spec();
    grant_http(&mut spec, &authority);
    let plugin = t.host.load(spec.clone()).await.unwrap();
    let answer = plugin
        .validate(config(&[("mode", "http"), ("url", &url)]), cred())
        .await
        .unwrap();
    assert!(
        matches!(answer, Err(ProviderError::Denied(_))),
        "{answer:?}"
    );
    let events = t.audit.events();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].reason, DenyReason::AddressProhibited);
    // Issue 15, item 5: the denial says where localhost went and what allows it.
    assert!(
        events[0].resolved.iter().all(|ip| ip.is_loopback()) && !events[0].resolved.is_empty(),
        "{events:?}"
    );
    let said = events[0].explain();
    assert!(said.contains("localhost resolved to"), "{said}");
    assert!(said.contains("allow_networks = ["), "{said}");
    assert!(server.hits.lock().unwrap().is_empty());

    spec.grants.allowed_networks = vec!["127.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()];
    let plugin = t.host.load(spec).await.unwrap();
    let answer = plugin
        .validate(config(&[("mode", "http"), ("url", &url)]), cred())
        .await
        .unwrap()
        .unwrap();
    assert!(answer.valid, "{answer:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_body_over_the_cap_fails_the_request() {
    let t = host();
    let server = http_fixture(Some(256 * 1024));
    let mut spec = basic_spec();
    grant_http(&mut spec, &server.addr.to_string());
    spec.limits.max_response_body = 64 * 1024;
    let plugin = t.host.load(spec).await.unwrap();
    let url = format!("http://{}/big", server.addr);
    let answer = plugin
        .validate(config(&[("mode", "http"), ("url", &url)]), cred())
        .await
        .unwrap();
    assert!(
        matches!(answer, Err(ProviderError::Unavailable(_))),
        "{answer:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_star_in_the_manifest_leaves_exactly_the_grant() {
    let t = host();
    let granted = http_fixture(None);
    let other = http_fixture(None);
    let mut spec = basic_spec();
    spec.manifest.needs.http = vec!["*".to_owned()];
    spec.grants.http.push(format!("http://{}", granted.addr));
    let plugin = t.host.load(spec).await.unwrap();
    let ok = plugin
        .validate(
            config(&[
                ("mode", "http"),
                ("url", &format!("http://{}/", granted.addr)),
            ]),
            cred(),
        )
        .await
        .unwrap()
        .unwrap();
    assert!(ok.valid, "{ok:?}");
    let denied = plugin
        .validate(
            config(&[
                ("mode", "http"),
                ("url", &format!("http://{}/", other.addr)),
            ]),
            cred(),
        )
        .await
        .unwrap();
    assert!(
        matches!(denied, Err(ProviderError::Denied(_))),
        "{denied:?}"
    );
    assert!(
        other.hits.lock().unwrap().is_empty(),
        "no byte may reach it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_star_the_manifest_still_limits_the_grant() {
    let t = host();
    let needed = http_fixture(None);
    let extra = http_fixture(None);
    let mut spec = basic_spec();
    spec.manifest.needs.http = vec![format!("http://{}", needed.addr)];
    spec.grants.http = vec![
        format!("http://{}", needed.addr),
        format!("http://{}", extra.addr),
    ];
    let plugin = t.host.load(spec).await.unwrap();
    let denied = plugin
        .validate(
            config(&[
                ("mode", "http"),
                ("url", &format!("http://{}/", extra.addr)),
            ]),
            cred(),
        )
        .await
        .unwrap();
    assert!(
        matches!(denied, Err(ProviderError::Denied(_))),
        "{denied:?}"
    );
    assert!(
        extra.hits.lock().unwrap().is_empty(),
        "no byte may reach it"
    );
}

/// `validate` in `http` mode against `url` with `allow_networks` set to `networks`.
async fn fetch_with_networks(
    t: &crate::support::TestHost,
    authority: &str,
    url: &str,
    networks: &[&str],
) -> Result<latchkey_plugin_host::Validation, ProviderError> {
    let mut spec = basic_spec();
    grant_http(&mut spec, authority);
    spec.grants.allowed_networks = networks.iter().map(|n| n.parse().unwrap()).collect();
    let plugin = t.host.load(spec).await.unwrap();
    plugin
        .validate(config(&[("mode", "http"), ("url", url)]), cred())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r7_an_ipv4_mapped_allowed_network_does_not_open_every_ipv4_address() {
    // `127.1` is a name to the grant (not an IP literal), which the resolver turns
    // into 127.0.0.1 only: the address check decides.
    let server = http_fixture(None);
    let authority = format!("127.1:{}", server.addr.port());
    let url = format!("http://{authority}/");
    let t = host();
    // `::ffff:10.0.0.0/104` is 10.0.0.0/8. It used to underflow (`32 - 104`) and, in a
    // release build, match every IPv4 address.
    let answer = fetch_with_networks(&t, &authority, &url, &["::ffff:10.0.0.0/104"]).await;
    assert!(
        matches!(answer, Err(ProviderError::Denied(_))),
        "{answer:?}"
    );
    let events = t.audit.events();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].reason, DenyReason::AddressProhibited);
    assert_eq!(events[0].target, format!("http://{authority}"));
    assert!(
        server.hits.lock().unwrap().is_empty(),
        "no byte may reach it"
    );

    // The same network written for loopback does allow it: a legitimate grant works.
    let t = host();
    let answer = fetch_with_networks(&t, &authority, &url, &["::ffff:127.0.0.0/104"])
        .await
        .unwrap();
    assert!(answer.valid, "{answer:?}");
    assert!(t.audit.events().is_empty());
    assert_eq!(server.hits.lock().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r7_plaintext_http_to_an_https_grant_is_denied_before_any_byte_is_sent() {
    let server = http_fixture(None);
    let authority = server.addr.to_string();
    let t = host();
    let mut spec = basic_spec();
    // A grant without a scheme: HTTPS only, whatever the port.
    spec.grants.http.push(authority.clone());
    spec.manifest.needs.http.push(authority.clone());
    let plugin = t.host.load(spec).await.unwrap();

    let plaintext = plugin
        .validate(
            config(&[("mode", "http"), ("url", &format!("http://{authority}/"))]),
            cred(),
        )
        .await
        .unwrap();
    assert!(
        matches!(plaintext, Err(ProviderError::Denied(_))),
        "{plaintext:?}"
    );
    let events = t.audit.events();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].reason, DenyReason::AuthorityNotGranted);
    assert_eq!(events[0].target, format!("http://{authority}"));
    assert!(
        server.hits.lock().unwrap().is_empty(),
        "no byte may reach it"
    );

    // HTTPS to the same authority is granted: the host connects and starts TLS
    // (which this plaintext fixture cannot answer), and audits nothing.
    let tls = plugin
        .validate(
            config(&[("mode", "http"), ("url", &format!("https://{authority}/"))]),
            cred(),
        )
        .await
        .unwrap();
    assert!(matches!(tls, Err(ProviderError::Unavailable(_))), "{tls:?}");
    assert_eq!(t.audit.events().len(), 1, "{:?}", t.audit.events());
}

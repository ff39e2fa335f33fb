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
    assert_eq!(events[0].target, other.addr.to_string());
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
    spec.grants.http.push(granted.addr.to_string());
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
    spec.manifest.needs.http = vec![needed.addr.to_string()];
    spec.grants.http = vec![needed.addr.to_string(), extra.addr.to_string()];
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

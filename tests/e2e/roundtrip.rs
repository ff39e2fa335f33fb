//! The upstream round trip, written by the clients teams use and read by a client
//! nobody here wrote: `roundtrip.py` writes with hvac and the `bao` CLI (OpenBao KV
//! v2) and boto3 (AWS Secrets Manager on `moto_server`), and reads through two agents
//! over mTLS on loopback TCP with httpx, comparing every field, JSON type and version
//! with what each upstream itself returns: nested paths, 20 fields, 50 KB, unicode
//! (ZWJ emoji, CJK, RTL, combining marks, BOM, NUL, CR/LF, empty), numbers, booleans,
//! null, nested objects, binary, and writes back through the agent.

use anyhow::Context as _;

use crate::harness::Agent;
use crate::moto::{Moto, REGION};
use crate::openbao::{OpenBao, ROOT_TOKEN};
use crate::upstream_agent::{aws_builder, bao_upstream, sync_section, token_auth};

const SCRIPT: &str = include_str!("roundtrip.py");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_hvac_the_bao_cli_and_boto3_write_is_what_httpx_reads_through_the_agent(
) -> anyhow::Result<()> {
    let bao = OpenBao::start().await?;
    let moto = Moto::start().await?;
    let on_bao = Agent::builder()
        .tcp()
        .append(&bao_upstream(&bao.address, &token_auth(ROOT_TOKEN), ""))
        .append(&sync_section("1s", "24h", 8))
        .start()
        .await?;
    let on_aws = aws_builder(&moto.endpoint).tcp().start().await?;
    let admin = on_bao.admin_identity();
    let aws_admin = on_aws.admin_identity();
    let url = |agent: &Agent| -> anyhow::Result<String> {
        Ok(format!(
            "https://{}",
            agent.tcp_addr().context("a TCP listener")?
        ))
    };
    // Each agent has its own CA: httpx trusts both, and presents each agent's admin
    // certificate to that agent.
    let both_ca = on_bao.scratch().join("both-ca.pem");
    std::fs::write(
        &both_ca,
        [
            std::fs::read(on_bao.ca_path())?,
            std::fs::read(on_aws.ca_path())?,
        ]
        .concat(),
    )?;
    let out = tokio::process::Command::new(crate::spawn::tool("python3"))
        .args(["-c", SCRIPT])
        .env("BAO_ADDR", &bao.address)
        .env("BAO_TOKEN", ROOT_TOKEN)
        .env("BAO_BIN", crate::spawn::tool("bao"))
        .env("MOTO_URL", &moto.endpoint)
        .env("AWS_REGION", REGION)
        .env("AGENT_BAO", url(&on_bao)?)
        .env("AGENT_AWS", url(&on_aws)?)
        .env("AGENT_CA", &both_ca)
        .env("AGENT_CERT", &admin.cert)
        .env("AGENT_KEY", &admin.key)
        .env("AGENT_AWS_CERT", &aws_admin.cert)
        .env("AGENT_AWS_KEY", &aws_admin.key)
        .kill_on_drop(true)
        .output()
        .await
        .context("run roundtrip.py")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "round trip failed:\n{stdout}\n{stderr}\n--- OpenBao agent\n{}\n--- AWS agent\n{}",
        on_bao.log_tail(),
        on_aws.log_tail()
    );
    assert!(
        stdout.contains("every field, type and version matched"),
        "{stdout}"
    );
    Ok(())
}

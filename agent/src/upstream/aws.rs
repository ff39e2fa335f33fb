//! AWS Secrets Manager, through the official AWS SDK for Rust.
//!
//! Credentials and region come from the SDK's normal chain (environment, shared
//! profile, web identity, ECS/EC2 metadata) unless the config sets a region, a profile
//! or an endpoint override (tests point it at `moto_server`). The SDK's HTTP client is
//! built in `upstream::http` (rustls on *ring*).
//!
//! Mapping:
//! - an agent path maps to a secret *name* through a [`PathTemplate`];
//! - a `SecretString` holding a JSON object maps to fields, each keeping its JSON
//!   type; any other string maps to one field, `value`. On write, a
//!   single field named `value` is stored as a plain string, anything else as a JSON
//!   object. A `SecretBinary` is served as one field, `binary`, holding its bytes in
//!   base64; a write through the agent always stores a `SecretString`.
//! - `read` is GetSecretValue of `AWSCURRENT`; `list` is ListSecrets filtered by name
//!   prefix, with secrets scheduled for deletion listed as tombstones; `metadata` is DescribeSecret; `write` is CreateSecret or PutSecretValue;
//!   `delete` is DeleteSecret (with the configured recovery window). A write through
//!   the agent also tags the secret with its kind and expiry, read back with
//!   DescribeSecret on each fetch ([`super::meta`]).
//! - Stages: [`AwsSecretsManager::read_stage`] reads `AWSPENDING`/`AWSPREVIOUS`, and
//!   labels map to stages (`current`, `previous`, `pending`, any other by name). A
//!   rotation follows AWS's own protocol, so rotation functions and latchkey coexist:
//!   step 1 creates the credential at the service, step 2 stages it as a version
//!   labelled only `AWSPENDING` (`createSecret`; [`Upstream::stage`]), step 3 tests
//!   it (`testSecret`), step 4 moves `AWSCURRENT` to it from the rotated version,
//!   conditionally, and drops `AWSPENDING` (`finishSecret`; [`Upstream::promote`]);
//!   AWS labels the old current `AWSPREVIOUS`. A rollback drops the pending label. A
//!   foreign `AWSPENDING` (a rotation function's rotation in flight) keeps latchkey
//!   from rotating until it finishes.
//!
//! ## Version numbers
//!
//! AWS version ids are opaque strings; the agent needs a `u64` that changes on every
//! new version and grows. Versions the agent writes get their number *inside* the
//! version id: we set `ClientRequestToken` (which becomes the `VersionId`) to
//! `{n:020}-latchkey-{random}`, where `n = max(current + 1, now in µs-ish)`: the Unix
//! time in milliseconds times 1000. A version written by anyone else (a UUID) gets its
//! creation time in whole seconds, as milliseconds, times 1000, plus a number from 0
//! to 999 taken from a hash of its id (whole seconds, because the calls that report
//! a version's creation time do not always agree on the part below a second), so two
//! foreign versions created in the same second still differ. Numbers therefore grow
//! with time across both kinds, as long as the agent's clock and AWS's agree to
//! within the time between two writes (and, within one second, the order of foreign
//! versions is arbitrary); equality, which is what change detection and check-and-set
//! use, is exact either way (barring a 1-in-1000 hash tie within one second).
//!
//! ## Check-and-set
//!
//! Secrets Manager has no conditional write, but moving a staging label is
//! conditional: `UpdateSecretVersionStage` with `RemoveFromVersionId` fails unless the
//! label is on that version now. `write` with `cas` therefore reads the current version
//! (DescribeSecret) and refuses with [`Error::Conflict`] if it differs; otherwise it
//! adds the new value as a version labelled only [`CAS_STAGE`] (apps keep reading
//! `AWSCURRENT`), then moves `AWSCURRENT` to it from the version it checked. If
//! another writer moved `AWSCURRENT` in between, the move fails, the staged version
//! loses its label (AWS deprecates unlabelled versions) and the write is a conflict:
//! exactly one of two racing writers wins, as with OpenBao's `cas`. A secret that does
//! not exist yet is created with `CreateSecret`, which fails if someone else created it
//! first. The `ClientRequestToken` makes each write idempotent: the SDK's own retries
//! of one write never create two versions.

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_secretsmanager::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_secretsmanager::primitives::DateTime;
use aws_sdk_secretsmanager::types::{Filter, FilterNameStringType};
use aws_sdk_secretsmanager::Client;
use sha2::Digest as _;
use zeroize::Zeroizing;

use super::config::AwsConfig;
use super::template::PathTemplate;
use super::{http, Error, RemoteMeta, RemoteSecret, Upstream};
use crate::path::{Prefix, SecretPath};
use crate::secret::{Fields, SecretString};

pub use aws_sdk_secretsmanager::config::Credentials;

/// The field a plain (non-JSON) secret string maps to.
pub const PLAIN_FIELD: &str = "value";

const TOKEN_MARK: &str = "-latchkey-";

/// A version stage label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// `AWSCURRENT`: what apps get.
    Current,
    /// `AWSPENDING`: a new version being rotated in.
    Pending,
    /// `AWSPREVIOUS`: the last known good version.
    Previous,
}

impl Stage {
    /// The AWS label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Current => "AWSCURRENT",
            Self::Pending => "AWSPENDING",
            Self::Previous => "AWSPREVIOUS",
        }
    }
}

/// The label a check-and-set write puts on its new version until `AWSCURRENT` moves to
/// it (see the module docs).
pub const CAS_STAGE: &str = "LATCHKEY_CAS";

/// One Secrets Manager account and region.
#[derive(Clone, Debug)]
pub struct AwsSecretsManager {
    name: String,
    client: Client,
    template: PathTemplate,
    recovery_window_days: i64,
}

/// What DescribeSecret tells about the current version.
struct Described {
    /// `None` when the secret is scheduled for deletion (or has no current version).
    current: Option<(String, u64, i64)>,
    deleted: bool,
    stages: HashMap<String, Vec<String>>,
    /// The secret's tags.
    tags: std::collections::BTreeMap<String, String>,
}

fn check_recovery_window(days: i64) -> Result<(), String> {
    if days != 0 && !(7..=30).contains(&days) {
        return Err("recovery_window_days: must be 0 or 7 to 30".to_owned());
    }
    Ok(())
}

/// Everything [`AwsSecretsManager::from_config`] would refuse, found without
/// building a client: what `latchkey check` reports for the section.
pub fn problems(config: &AwsConfig) -> Vec<String> {
    let mut problems = Vec::new();
    if let Err(e) = PathTemplate::parse(&config.name_template, config.tenant.as_deref()) {
        problems.push(format!("upstream.name_template: {e}"));
    }
    if let Err(e) = check_recovery_window(config.recovery_window_days) {
        problems.push(format!("upstream.{e}"));
    }
    problems
}

impl AwsSecretsManager {
    /// Builds a client from its config section with the SDK's credential chain.
    pub async fn from_config(config: &AwsConfig) -> Result<Self, Error> {
        Self::from_config_with_credentials(config, None).await
    }

    /// Like [`AwsSecretsManager::from_config`], with fixed credentials instead of the
    /// chain (tests against moto; callers that fetch credentials themselves).
    pub async fn from_config_with_credentials(
        config: &AwsConfig,
        credentials: Option<Credentials>,
    ) -> Result<Self, Error> {
        let name = config.name.clone();
        let template = PathTemplate::parse(&config.name_template, config.tenant.as_deref())
            .map_err(|e| Error::Config {
                upstream: name.clone(),
                reason: "name_template is not usable".to_owned(),
                source: Some(Box::new(e)),
            })?;
        if let Err(reason) = check_recovery_window(config.recovery_window_days) {
            return Err(Error::Config {
                upstream: name,
                reason,
                source: None,
            });
        }
        // Without an attempt timeout the SDK would wait on a hung connection for ever;
        // a sidecar must fail over to its cache instead.
        let timeouts = aws_config::timeout::TimeoutConfig::builder()
            .connect_timeout(config.connect_timeout)
            .operation_attempt_timeout(config.request_timeout)
            .build();
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .http_client(http::aws_http_client())
            .timeout_config(timeouts);
        if let Some(region) = &config.region {
            loader = loader.region(aws_config::Region::new(region.clone()));
        }
        if let Some(profile) = &config.profile {
            loader = loader.profile_name(profile);
        }
        if let Some(url) = &config.endpoint_url {
            loader = loader.endpoint_url(url);
        }
        if let Some(credentials) = credentials {
            loader = loader.credentials_provider(credentials);
        }
        let sdk = loader.load().await;
        Ok(Self {
            name,
            client: Client::new(&sdk),
            template,
            recovery_window_days: config.recovery_window_days,
        })
    }

    /// The secret name of an agent path; refuses characters AWS does not allow.
    fn secret_name(&self, path: &SecretPath) -> Result<String, Error> {
        let name = self.template.remote(path);
        if name.contains(',') {
            return Err(Error::Invalid {
                upstream: self.name.clone(),
                what: format!("path {path}"),
                reason: "AWS secret names cannot contain ','".to_owned(),
            });
        }
        Ok(name)
    }

    /// Reads the version that carries `stage`. `Ok(None)` if the secret or the stage
    /// does not exist.
    pub async fn read_stage(
        &self,
        path: &SecretPath,
        stage: Stage,
    ) -> Result<Option<RemoteSecret>, Error> {
        self.read_staging_label(path, stage.label()).await
    }

    /// The version of `path` carrying the staging label `label` (AWS's own or a
    /// custom one), `None` when no version carries it.
    async fn read_staging_label(
        &self,
        path: &SecretPath,
        label: &str,
    ) -> Result<Option<RemoteSecret>, Error> {
        let name = self.secret_name(path)?;
        let out = match self
            .client
            .get_secret_value()
            .secret_id(&name)
            .version_stage(label)
            .send()
            .await
        {
            Ok(out) => out,
            Err(e) => {
                let code = e.code().map(str::to_owned);
                return match code.as_deref() {
                    Some("ResourceNotFoundException") => Ok(None),
                    // "marked for deletion" is an InvalidRequestException.
                    Some("InvalidRequestException") if self.describe(&name).await?.deleted => {
                        Ok(None)
                    }
                    _ => Err(self.sdk_error(&format!("read {path}"), e)),
                };
            }
        };
        let fields = match (out.secret_string(), out.secret_binary()) {
            (Some(text), _) => decode_fields(text),
            (None, Some(blob)) => binary_fields(blob.as_ref()),
            (None, None) => Fields::new(),
        };
        let version_id = out.version_id().unwrap_or_default();
        let read_created = out.created_date().map_or(0, DateTime::secs);
        let ordered = parse_token(version_id).is_some();
        let (version, updated_at) = if ordered {
            (version_number(version_id, out.created_date()), read_created)
        } else {
            // A version someone else wrote is numbered by its creation time, taken
            // from the same call `metadata` and `list` use: GetSecretValue may round
            // that time differently (seen with moto: a whole second apart).
            let (_, number, created) = self.number_of(&name, version_id).await?;
            (number, if created == 0 { read_created } else { created })
        };
        // Tags are the secret's, not the version's: one DescribeSecret per fetch.
        let (kind, expires_at) = super::meta::read(
            &self.describe(&name).await?.tags,
            super::meta::AWS_KIND,
            super::meta::AWS_EXPIRES_AT,
        );
        Ok(Some(RemoteSecret {
            path: path.clone(),
            version,
            fields,
            updated_at,
            ordered,
            kind,
            expires_at,
        }))
    }

    /// DescribeSecret plus, for a current version we did not write, its creation time
    /// (ListSecretVersionIds), so its number is the same one `read` reports.
    async fn describe(&self, name: &str) -> Result<Described, Error> {
        let out = match self.client.describe_secret().secret_id(name).send().await {
            Ok(out) => out,
            Err(e) if e.code() == Some("ResourceNotFoundException") => {
                return Ok(Described {
                    current: None,
                    deleted: false,
                    stages: HashMap::new(),
                    tags: std::collections::BTreeMap::new(),
                })
            }
            Err(e) => return Err(self.sdk_error(&format!("describe {name}"), e)),
        };
        let deleted = out.deleted_date().is_some();
        let stages = out.version_ids_to_stages().cloned().unwrap_or_default();
        let current_id = current_of(&stages);
        let current = match (deleted, current_id) {
            (false, Some(id)) => Some(self.number_of(name, &id).await?),
            _ => None,
        };
        let tags = out
            .tags()
            .iter()
            .filter_map(|t| Some((t.key()?.to_owned(), t.value()?.to_owned())))
            .collect();
        Ok(Described {
            current,
            deleted,
            stages,
            tags,
        })
    }

    /// The second half of a check-and-set write: moves `AWSCURRENT` from `checked` (the
    /// version the write was checked against, numbered `expected`) to `staged`. AWS
    /// refuses the move if `AWSCURRENT` is no longer on `checked`; then the staged
    /// version loses its label and the write is a conflict.
    async fn move_current(
        &self,
        path: &SecretPath,
        name: &str,
        staged: &str,
        checked: &str,
        expected: u64,
    ) -> Result<(), Error> {
        let moved = self
            .client
            .update_secret_version_stage()
            .secret_id(name)
            .version_stage(Stage::Current.label())
            .move_to_version_id(staged)
            .remove_from_version_id(checked)
            .send()
            .await;
        let refused = match moved {
            Ok(_) => return Ok(()),
            Err(e) if e.code() == Some("InvalidParameterException") => e,
            Err(e) => return Err(self.sdk_error(&format!("write {path}"), e)),
        };
        // Refused: make sure it is because another write won, not a bad request.
        let now = self.describe(name).await?;
        if carries(&now.stages, checked, Stage::Current.label()) {
            return Err(self.sdk_error(&format!("write {path}"), refused));
        }
        if let Err(e) = self
            .unlabel(name, staged, CAS_STAGE, &format!("write {path}"))
            .await
        {
            tracing::debug!(path = %path, error = %e, "cannot unlabel the version of a lost write");
        }
        Err(Error::Conflict {
            path: path.clone(),
            expected,
            current: now.current.map(|(_, v, _)| v),
        })
    }

    /// Removes the staging label `label` from version `id` of `name`; errors name
    /// `operation`.
    async fn unlabel(
        &self,
        name: &str,
        id: &str,
        label: &str,
        operation: &str,
    ) -> Result<(), Error> {
        self.client
            .update_secret_version_stage()
            .secret_id(name)
            .version_stage(label)
            .remove_from_version_id(id)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| self.sdk_error(operation, e))
    }

    /// Tags `path` with latchkey's kind and expiry (the expiry tag removed when the
    /// write has none).
    async fn record_tags(
        &self,
        path: &SecretPath,
        write: &crate::store::Write,
    ) -> Result<(), Error> {
        use aws_sdk_secretsmanager::types::Tag;
        let name = self.secret_name(path)?;
        let kind = write.kind.as_deref().unwrap_or(crate::store::DEFAULT_KIND);
        let mut tagging = self.client.tag_resource().secret_id(&name).tags(
            Tag::builder()
                .key(super::meta::AWS_KIND)
                .value(kind)
                .build(),
        );
        if let Some(at) = write.expires_at {
            tagging = tagging.tags(
                Tag::builder()
                    .key(super::meta::AWS_EXPIRES_AT)
                    .value(at.to_string())
                    .build(),
            );
        }
        tagging
            .send()
            .await
            .map_err(|e| self.sdk_error(&format!("tag {path}"), e))?;
        if write.expires_at.is_none() {
            self.client
                .untag_resource()
                .secret_id(&name)
                .tag_keys(super::meta::AWS_EXPIRES_AT)
                .send()
                .await
                .map_err(|e| self.sdk_error(&format!("untag {path}"), e))?;
        }
        Ok(())
    }

    /// `(version id, number, created seconds)` of one version of `name`.
    async fn number_of(&self, name: &str, id: &str) -> Result<(String, u64, i64), Error> {
        let mut next_token = None;
        loop {
            let out = self
                .client
                .list_secret_version_ids()
                .secret_id(name)
                .include_deprecated(false)
                .set_next_token(next_token)
                .send()
                .await
                .map_err(|e| self.sdk_error(&format!("list versions of {name}"), e))?;
            if let Some(v) = out.versions().iter().find(|v| v.version_id() == Some(id)) {
                let created = v.created_date();
                return Ok((
                    id.to_owned(),
                    version_number(id, created),
                    created.map_or(0, DateTime::secs),
                ));
            }
            // An empty token is the end too (moto sends `""`).
            next_token = out
                .next_token()
                .filter(|t| !t.is_empty())
                .map(str::to_owned);
            if next_token.is_none() {
                // Listed by DescribeSecret but not here: number it from the id alone.
                return Ok((id.to_owned(), version_number(id, None), 0));
            }
        }
    }

    fn sdk_error<E, R>(&self, operation: &str, err: SdkError<E, R>) -> Error
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
        R: std::fmt::Debug + Send + Sync + 'static,
    {
        let upstream = self.name.clone();
        match &err {
            SdkError::ServiceError(_) => {
                let code = err.code().unwrap_or("unknown").to_owned();
                match code.as_str() {
                    "AccessDeniedException"
                    | "UnrecognizedClientException"
                    | "InvalidSignatureException"
                    | "ExpiredTokenException"
                    | "IncompleteSignature" => Error::Denied {
                        upstream,
                        operation: operation.to_owned(),
                    },
                    "ResourceNotFoundException" => Error::NotFound {
                        upstream,
                        what: operation.to_owned(),
                    },
                    "InternalServiceError"
                    | "InternalFailure"
                    | "ThrottlingException"
                    | "ServiceUnavailable"
                    | "RequestTimeout" => Error::Unavailable {
                        upstream,
                        address: "secretsmanager".to_owned(),
                        source: Box::new(err),
                    },
                    _ => Error::Invalid {
                        upstream,
                        what: operation.to_owned(),
                        reason: format!("AWS answered {code}"),
                    },
                }
            }
            SdkError::ConstructionFailure(_) => Error::Invalid {
                upstream,
                what: operation.to_owned(),
                reason: "request could not be built".to_owned(),
            },
            // Dispatch failures, timeouts, unreadable responses: reachability.
            _ => Error::Unavailable {
                upstream,
                address: "secretsmanager".to_owned(),
                source: Box::new(err),
            },
        }
    }
}

#[async_trait]
impl Upstream for AwsSecretsManager {
    fn name(&self) -> &str {
        &self.name
    }

    async fn read(&self, path: &SecretPath) -> Result<Option<RemoteSecret>, Error> {
        self.read_stage(path, Stage::Current).await
    }

    /// `current`, `previous` and `pending` are `AWSCURRENT`, `AWSPREVIOUS` and
    /// `AWSPENDING`; any other label is a staging label by that name (a rotation
    /// Lambda's or a team's own).
    async fn read_label(
        &self,
        path: &SecretPath,
        label: &str,
    ) -> Result<Option<RemoteSecret>, Error> {
        let stage = match label {
            "current" => Stage::Current.label(),
            "previous" => Stage::Previous.label(),
            "pending" => Stage::Pending.label(),
            other => other,
        };
        self.read_staging_label(path, stage).await
    }

    async fn list(&self, prefix: &Prefix) -> Result<Vec<RemoteMeta>, Error> {
        let remote_prefix = self.template.remote_prefix(prefix);
        let mut out = Vec::new();
        let mut next_token = None;
        loop {
            let mut request = self
                .client
                .list_secrets()
                .max_results(100)
                // Secrets scheduled for deletion are listed too, as tombstones: each
                // is a deletion the upstream's metadata records one by one.
                .include_planned_deletion(true)
                .set_next_token(next_token);
            if !remote_prefix.is_empty() {
                // The name filter is a case-insensitive prefix match; we check again below.
                request = request.filters(
                    Filter::builder()
                        .key(FilterNameStringType::Name)
                        .values(remote_prefix.clone())
                        .build(),
                );
            }
            let page = request
                .send()
                .await
                .map_err(|e| self.sdk_error(&format!("list {prefix}"), e))?;
            for entry in page.secret_list() {
                let Some(name) = entry.name() else { continue };
                let Some(path) = self.template.local(name) else {
                    continue;
                };
                if !prefix.matches(&path) {
                    continue;
                }
                if entry.deleted_date().is_some() {
                    out.push(RemoteMeta::tombstone(path));
                    continue;
                }
                let stages = entry
                    .secret_versions_to_stages()
                    .cloned()
                    .unwrap_or_default();
                let Some(current) = current_of(&stages) else {
                    continue;
                };
                let (version, updated_at) = match parse_token(&current) {
                    Some(n) => (n, entry.last_changed_date().map_or(0, DateTime::secs)),
                    None => {
                        let (_, n, created) = self.number_of(name, &current).await?;
                        (n, created)
                    }
                };
                out.push(RemoteMeta::live(path, version, updated_at));
            }
            next_token = page
                .next_token()
                .filter(|t| !t.is_empty())
                .map(str::to_owned);
            if next_token.is_none() {
                return Ok(out);
            }
        }
    }

    async fn metadata(&self, path: &SecretPath) -> Result<Option<RemoteMeta>, Error> {
        let name = self.secret_name(path)?;
        let described = self.describe(&name).await?;
        Ok(described
            .current
            .map(|(_, version, updated_at)| RemoteMeta::live(path.clone(), version, updated_at)))
    }

    /// The value first (with its check-and-set), then latchkey's tags
    /// ([`super::meta`]); other tags are left alone. Tags that cannot be set (a
    /// policy without `secretsmanager:TagResource`) are said, not fatal.
    async fn put(&self, path: &SecretPath, write: &crate::store::Write) -> Result<u64, Error> {
        let version = self.write(path, &write.fields, write.cas).await?;
        self.record_meta(path, write).await;
        Ok(version)
    }

    async fn record_meta(&self, path: &SecretPath, write: &crate::store::Write) {
        if let Err(e) = self.record_tags(path, write).await {
            tracing::warn!(upstream = %self.name, path = %path, error = %e,
                "cannot record kind and expiry in the secret's tags; other agents will see it as generic");
        }
    }

    async fn write(
        &self,
        path: &SecretPath,
        fields: &Fields,
        cas: Option<u64>,
    ) -> Result<u64, Error> {
        let name = self.secret_name(path)?;
        let described = self.describe(&name).await?;
        let current = described.current.as_ref().map_or(0, |(_, v, _)| *v);
        if let Some(expected) = cas {
            if expected != current {
                return Err(Error::Conflict {
                    path: path.clone(),
                    expected,
                    current: Some(current),
                });
            }
        }
        let next = next_version(current);
        let token = version_token(next);
        let secret = encode_fields(fields);
        if described.deleted {
            // A write brings a secret that is scheduled for deletion back.
            self.client
                .restore_secret()
                .secret_id(&name)
                .send()
                .await
                .map_err(|e| self.sdk_error(&format!("restore {path}"), e))?;
        }
        if described.current.is_none() && !described.deleted {
            let created = self
                .client
                .create_secret()
                .name(&name)
                .secret_string(secret.as_str())
                .client_request_token(&token)
                .send()
                .await;
            match created {
                Ok(_) => return Ok(next),
                Err(e) if e.code() == Some("ResourceExistsException") => {
                    // Someone created it between our describe and our create.
                    return Err(Error::Conflict {
                        path: path.clone(),
                        expected: cas.unwrap_or(0),
                        current: None,
                    });
                }
                Err(e) => return Err(self.sdk_error(&format!("create {path}"), e)),
            }
        }
        let checked = match (&cas, &described.current) {
            (Some(_), Some((id, _, _))) if !described.deleted => Some(id),
            _ => None,
        };
        let mut put = self
            .client
            .put_secret_value()
            .secret_id(&name)
            .secret_string(secret.as_str())
            .client_request_token(&token);
        if checked.is_some() {
            put = put.version_stages(CAS_STAGE);
        }
        put.send()
            .await
            .map_err(|e| self.sdk_error(&format!("write {path}"), e))?;
        if let Some(checked) = checked {
            self.move_current(path, &name, &token, checked, current)
                .await?;
        }
        Ok(next)
    }

    async fn version_of(&self, path: &SecretPath, id: &str) -> Result<Option<u64>, Error> {
        if let Some(n) = parse_token(id) {
            return Ok(Some(n));
        }
        let name = self.secret_name(path)?;
        Ok(Some(self.number_of(&name, id).await?.1))
    }

    /// A version labelled only `AWSPENDING`, as a rotation function's `createSecret`
    /// makes it. A pending version we staged before (an interrupted rotation) is
    /// replaced; one someone else staged on a version other than the current one is
    /// a rotation in flight outside latchkey: [`Error::Busy`], until it finishes.
    async fn stage(
        &self,
        path: &SecretPath,
        fields: &Fields,
        base: u64,
    ) -> Result<Option<u64>, Error> {
        let name = self.secret_name(path)?;
        let described = self.describe(&name).await?;
        let Some((current_id, current, _)) = &described.current else {
            return Err(Error::NotFound {
                upstream: self.name.clone(),
                what: format!("secret {path}"),
            });
        };
        if *current != base {
            return Err(Error::Conflict {
                path: path.clone(),
                expected: base,
                current: Some(*current),
            });
        }
        if let Some(foreign) = labelled(&described.stages, Stage::Pending.label())
            .find(|id| *id != current_id && parse_token(id).is_none())
        {
            return Err(Error::Busy {
                upstream: self.name.clone(),
                path: path.clone(),
                detail: format!("version {foreign} is AWSPENDING (a rotation outside latchkey)"),
            });
        }
        let next = next_version(*current);
        let secret = encode_fields(fields);
        self.client
            .put_secret_value()
            .secret_id(&name)
            .secret_string(secret.as_str())
            .client_request_token(version_token(next))
            .version_stages(Stage::Pending.label())
            .send()
            .await
            .map_err(|e| self.sdk_error(&format!("stage pending {path}"), e))?;
        Ok(Some(next))
    }

    /// `finishSecret`: moves `AWSCURRENT` from `base` to the staged version (AWS labels
    /// the old current `AWSPREVIOUS`), conditional on `AWSCURRENT` still being on
    /// `base`, then drops `AWSPENDING`.
    async fn promote(&self, path: &SecretPath, staged: u64, base: u64) -> Result<(), Error> {
        let name = self.secret_name(path)?;
        let described = self.describe(&name).await?;
        let target = described
            .stages
            .keys()
            .find(|id| parse_token(id) == Some(staged))
            .cloned()
            .ok_or_else(|| Error::NotFound {
                upstream: self.name.clone(),
                what: format!("pending version {staged} of {path}"),
            })?;
        let current = described.current.as_ref();
        if current.is_none_or(|(id, _, _)| *id != target) {
            let Some((current_id, number, _)) = current.filter(|(_, n, _)| *n == base) else {
                return Err(Error::Conflict {
                    path: path.clone(),
                    expected: base,
                    current: current.map(|(_, n, _)| *n),
                });
            };
            self.move_current(path, &name, &target, current_id, *number)
                .await?;
        }
        if !carries(&described.stages, &target, Stage::Pending.label()) {
            return Ok(());
        }
        self.unlabel(
            &name,
            &target,
            Stage::Pending.label(),
            &format!("promote {path}"),
        )
        .await
    }

    async fn unstage(&self, path: &SecretPath, staged: u64) -> Result<(), Error> {
        let name = self.secret_name(path)?;
        let described = self.describe(&name).await?;
        let Some(target) = labelled(&described.stages, Stage::Pending.label())
            .find(|id| parse_token(id) == Some(staged))
            .cloned()
        else {
            return Ok(());
        };
        self.unlabel(
            &name,
            &target,
            Stage::Pending.label(),
            &format!("unstage {path}"),
        )
        .await
    }

    async fn delete(&self, path: &SecretPath) -> Result<Option<bool>, Error> {
        let name = self.secret_name(path)?;
        let mut request = self.client.delete_secret().secret_id(&name);
        request = if self.recovery_window_days == 0 {
            request.force_delete_without_recovery(true)
        } else {
            request.recovery_window_in_days(self.recovery_window_days)
        };
        match request.send().await {
            Ok(_) => Ok(None),
            Err(e) if e.code() == Some("ResourceNotFoundException") => Ok(None),
            Err(e) if e.code() == Some("InvalidRequestException") => {
                // Already scheduled for deletion: nothing left to do.
                if self.describe(&name).await?.deleted {
                    Ok(None)
                } else {
                    Err(self.sdk_error(&format!("delete {path}"), e))
                }
            }
            Err(e) => Err(self.sdk_error(&format!("delete {path}"), e)),
        }
    }
}

/// The field a `SecretBinary` is served in, base64 (standard alphabet, padded).
pub const BINARY_FIELD: &str = "binary";

/// A binary secret's one field: its bytes in base64, in a zeroizing string.
fn binary_fields(bytes: &[u8]) -> Fields {
    use base64::Engine as _;
    let encoded = base64::engine::general_purpose::STANDARD.encode(bytes);
    [(BINARY_FIELD.to_owned(), SecretString::from(encoded))]
        .into_iter()
        .collect()
}

/// The version ids carrying `label`.
fn labelled<'a>(
    stages: &'a HashMap<String, Vec<String>>,
    label: &'a str,
) -> impl Iterator<Item = &'a String> + 'a {
    stages
        .iter()
        .filter(move |(_, labels)| labels.iter().any(|l| l == label))
        .map(|(id, _)| id)
}

/// Whether version `id` carries `label`.
fn carries(stages: &HashMap<String, Vec<String>>, id: &str, label: &str) -> bool {
    stages
        .get(id)
        .is_some_and(|labels| labels.iter().any(|l| l == label))
}

/// The version id labelled `AWSCURRENT`. AWS keeps exactly one; should an upstream
/// label two (moto has been seen to), the newest the agent numbered wins, whatever
/// the map's order, so a listing does not flip between them. (`sync` refuses a
/// version that goes backwards either way.)
fn current_of(stages: &HashMap<String, Vec<String>>) -> Option<String> {
    labelled(stages, Stage::Current.label())
        .max_by_key(|id| (parse_token(id), *id))
        .cloned()
}

/// The number of a version: ours carry it in the id, others get their creation time
/// (whole seconds, as milliseconds) times 1000 plus a tie-break from the id (never 0, which means
/// "does not exist").
fn version_number(version_id: &str, created: Option<&DateTime>) -> u64 {
    if let Some(n) = parse_token(version_id) {
        return n;
    }
    // Whole seconds: GetSecretValue and ListSecretVersionIds do not always report
    // the same sub-second part of one version's creation time, and both must give
    // the same number.
    let millis = created.map_or(0, |d| {
        u64::try_from(d.secs()).unwrap_or(0).saturating_mul(1000)
    });
    let digest = sha2::Sha256::digest(version_id.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    let tiebreak = u64::from_be_bytes(first) % 1000;
    millis.saturating_mul(1000).saturating_add(tiebreak).max(1)
}

/// The number of the next version we write after `current`.
fn next_version(current: u64) -> u64 {
    let now = u64::try_from(crate::clock::now_ms()).unwrap_or(0);
    current.saturating_add(1).max(now.saturating_mul(1000))
}

/// A `ClientRequestToken` (32–64 characters) that carries `n`.
fn version_token(n: u64) -> String {
    format!("{n:020}{TOKEN_MARK}{:016x}", rand::random::<u64>())
}

fn parse_token(version_id: &str) -> Option<u64> {
    let (number, rest) = version_id.split_once(TOKEN_MARK)?;
    if number.len() != 20 || rest.len() != 16 {
        return None;
    }
    number.parse().ok()
}

fn decode_fields(text: &str) -> Fields {
    match serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(text) {
        Ok(map) => {
            let mut fields = Fields::new();
            for (name, value) in map {
                fields.insert_value(name, value);
            }
            fields
        }
        Err(_) => {
            let mut fields = Fields::new();
            fields.insert(PLAIN_FIELD, SecretString::from(text));
            fields
        }
    }
}

fn encode_fields(fields: &Fields) -> Zeroizing<String> {
    if fields.len() == 1 && !fields.is_json(PLAIN_FIELD) {
        if let Some(value) = fields.get(PLAIN_FIELD) {
            return Zeroizing::new(value.expose().to_owned());
        }
    }
    // Serializing fields cannot fail: non-string values were checked as JSON.
    Zeroizing::new(serde_json::to_string(&fields.exposed()).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_tokens_round_trip_and_fit_aws_limits() {
        let token = version_token(1_763_850_000_123);
        assert!((32..=64).contains(&token.len()), "{token}");
        assert_eq!(parse_token(&token), Some(1_763_850_000_123));
        assert_eq!(parse_token("3f2b8c1e-0d7a-4e55-9a43-2b6f0c9d1e77"), None);
    }

    #[test]
    fn foreign_versions_are_numbered_by_creation_time() {
        let created = DateTime::from_secs(1_700_000_000);
        let a = version_number("3f2b8c1e-0d7a-4e55-9a43-2b6f0c9d1e77", Some(&created));
        let b = version_number("9a1c0f2e-5b7d-4c33-8e21-7d4a6b0c2f19", Some(&created));
        assert!(
            (1_700_000_000_000_000..1_700_000_000_001_000).contains(&a),
            "{a}"
        );
        assert_ne!(a, b, "same second, different ids");
        assert_eq!(
            a,
            version_number("3f2b8c1e-0d7a-4e55-9a43-2b6f0c9d1e77", Some(&created)),
            "stable"
        );
        assert!(version_number("uuid", None) < 1000);
        assert!(next_version(5) > 1_700_000_000_000_000, "now in ms * 1000");
        assert!(next_version(a) > a);
        assert_eq!(next_version(u64::MAX - 1), u64::MAX);
    }

    #[test]
    fn json_maps_to_fields_and_plain_to_value() {
        let f = decode_fields(r#"{"user":"app","port":5432}"#);
        assert_eq!(f.get("user").map(|v| v.expose()), Some("app"));
        assert_eq!(f.get("port").map(|v| v.expose()), Some("5432"));
        let plain = decode_fields("just-a-token");
        assert_eq!(
            plain.get(PLAIN_FIELD).map(|v| v.expose()),
            Some("just-a-token")
        );
        assert_eq!(encode_fields(&plain).as_str(), "just-a-token");
        assert!(f.is_json("port"));
        assert_eq!(
            encode_fields(&f).as_str(),
            r#"{"port":5432,"user":"app"}"#,
            "each field keeps its JSON type"
        );
        let mut typed_value = Fields::new();
        typed_value
            .insert_json(PLAIN_FIELD, SecretString::from("5"))
            .expect("json");
        assert_eq!(
            encode_fields(&typed_value).as_str(),
            r#"{"value":5}"#,
            "a typed `value` is not flattened into a plain string"
        );
        let list = decode_fields(r#"["a"]"#);
        assert_eq!(list.get(PLAIN_FIELD).map(|v| v.expose()), Some(r#"["a"]"#));
    }
}

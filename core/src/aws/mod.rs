//! AWS SDK configuration shared by the S3 output and the DynamoDB position store.
//!
//! Credentials and region come from the standard AWS chain (environment, profile, SSO, ECS task
//! role, instance metadata). The standard `AWS_ENDPOINT_URL` (or `AWS_ENDPOINT_URL_S3`,
//! `AWS_ENDPOINT_URL_DYNAMODB`) points the clients at a local emulator.

use aws_config::BehaviorVersion;

pub mod error;

/// Loads the SDK configuration once per process (cheap to clone).
pub async fn sdk_config() -> aws_config::SdkConfig {
    aws_config::defaults(BehaviorVersion::latest()).load().await
}

/// The SDK's timeouts with an attempt and an operation timeout filled in where the
/// configuration set none: without them a request to an unresponsive endpoint can hang its
/// caller (a commit, a publish under a lease) indefinitely.
pub fn bounded_timeouts(
    sdk: &aws_config::SdkConfig,
    attempt: std::time::Duration,
    operation: std::time::Duration,
) -> aws_config::timeout::TimeoutConfig {
    let t = sdk
        .timeout_config()
        .cloned()
        .unwrap_or_else(aws_config::timeout::TimeoutConfig::disabled);
    let mut b = t.to_builder();
    if t.operation_attempt_timeout().is_none() {
        b = b.operation_attempt_timeout(attempt);
    }
    if t.operation_timeout().is_none() {
        b = b.operation_timeout(operation);
    }
    if t.connect_timeout().is_none() {
        b = b.connect_timeout(std::time::Duration::from_secs(5));
    }
    b.build()
}

/// Whether an endpoint override is set (a local emulator): S3 then uses path-style addressing.
pub fn endpoint_overridden() -> bool {
    ["AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"]
        .iter()
        .any(|k| std::env::var_os(k).is_some_and(|v| !v.is_empty()))
}

/// The password stored in a Secrets Manager secret: its `password` field when the secret is
/// JSON (the RDS format), else the whole string.
pub async fn secret_password(arn: &str) -> crate::Result<crate::config::Secret> {
    let client = aws_sdk_secretsmanager::Client::new(&sdk_config().await);
    let out = client
        .get_secret_value()
        .secret_id(arn)
        .send()
        .await
        .map_err(|e| {
            let f = error::Failure::of(&e);
            crate::Error::with_source(
                f.kind(),
                format!(
                    "cannot read the password secret {arn}: {} (check the ARN and secretsmanager:GetSecretValue)",
                    f.detail
                ),
                e,
            )
        })?;
    let raw = out
        .secret_string()
        .ok_or_else(|| crate::Error::config(format!("secret {arn} has no string value")))?;
    let password = match serde_json::from_str::<serde_json::Value>(raw) {
        Ok(serde_json::Value::Object(m)) => m
            .get("password")
            .and_then(|p| p.as_str())
            .map(str::to_string)
            .ok_or_else(|| {
                crate::Error::config(format!("secret {arn} is JSON without a \"password\" field"))
            })?,
        _ => raw.to_string(),
    };
    Ok(crate::config::Secret::new(password))
}

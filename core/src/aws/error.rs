//! One classifier for every AWS call (S3, DynamoDB, Kinesis, Secrets Manager): what a failure
//! left after the SDK's own retries means for the caller. The service words the message (which
//! bucket, table or stream, which permission); the meaning, and so the [`ErrorKind`], is decided
//! here, once.

use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;

use crate::error::ErrorKind;

/// What an AWS failure means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// SlowDown, 429, 503, throughput and rate limits.
    Throttled,
    /// 5xx, timeouts, dropped connections, transaction conflicts, a resource being updated.
    Unavailable,
    /// The bucket, table, stream or secret does not exist (or not in this region).
    NotFound,
    /// The identity may not do this.
    AccessDenied,
    /// No credentials, or credentials the service rejects.
    Credentials,
    /// The request time is too far from the service's.
    ClockSkew,
    /// The resource is in another region.
    WrongRegion,
    /// A KMS key that cannot be used.
    Kms,
    /// A parameter the configuration supplied is not valid (bucket name, stream argument).
    Invalid,
    /// The request could not be sent as configured (endpoint URL).
    Endpoint,
    /// A conditional write found another writer's state.
    ConditionFailed,
    /// Anything else the service refused: a bug or an unexpected state.
    Rejected,
}

impl Cause {
    pub fn kind(self) -> ErrorKind {
        match self {
            Cause::Throttled | Cause::Unavailable => ErrorKind::Transient,
            Cause::NotFound
            | Cause::AccessDenied
            | Cause::Credentials
            | Cause::ClockSkew
            | Cause::WrongRegion
            | Cause::Kms
            | Cause::Invalid
            | Cause::Endpoint => ErrorKind::Config,
            Cause::ConditionFailed => ErrorKind::Conflict,
            Cause::Rejected => ErrorKind::Fatal,
        }
    }
}

/// Error codes the SDKs' standard retry treats as throttling, plus the services' own.
const THROTTLING_CODES: &[&str] = &[
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottled",
    "RequestThrottledException",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "BandwidthLimitExceeded",
    "LimitExceededException",
    "PriorRequestNotComplete",
    "ProvisionedThroughputExceededException",
    "KMSThrottlingException",
];

const UNAVAILABLE_CODES: &[&str] = &[
    "InternalError",
    "InternalFailure",
    "InternalServerError",
    "ServiceUnavailable",
    "RequestTimeout",
    "RequestTimeoutException",
    "OperationAborted",
    // A multipart upload that vanished under a retried part: the whole put is retried.
    "NoSuchUpload",
    "TransactionConflictException",
    "ReplicatedWriteConflictException",
    // A table or stream being created or updated.
    "ResourceInUseException",
    // A shard iterator (or a ListShards token) older than five minutes: start over.
    "ExpiredIteratorException",
    "ExpiredNextTokenException",
];

const ACCESS_CODES: &[&str] = &[
    "AccessDenied",
    "AccessDeniedException",
    "AllAccessDisabled",
    "AccountProblem",
    "NotSignedUp",
    "Forbidden",
];

const CREDENTIAL_CODES: &[&str] = &[
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "ExpiredTokenException",
    "InvalidToken",
    "TokenRefreshRequired",
    "MissingSecurityHeader",
    "InvalidSecurity",
    "InvalidClientTokenId",
    "UnrecognizedClientException",
    "InvalidSignatureException",
    "IncompleteSignatureException",
    "MissingAuthenticationTokenException",
];

const REGION_CODES: &[&str] = &[
    "PermanentRedirect",
    "TemporaryRedirect",
    "Redirect",
    "AuthorizationHeaderMalformed",
    "IllegalLocationConstraintException",
];

/// KMS failures as Kinesis and Secrets Manager name them (S3 prefixes `KMS.`).
const KMS_CODES: &[&str] = &[
    "KMSAccessDeniedException",
    "KMSDisabledException",
    "KMSNotFoundException",
    "KMSInvalidStateException",
    "KMSOptInRequired",
    "DecryptionFailure",
];

/// Classifies a service error response by its code, message and HTTP status.
pub fn classify(code: Option<&str>, message: Option<&str>, status: Option<u16>) -> Cause {
    let mentions_kms = message.is_some_and(|m| {
        let m = m.to_ascii_lowercase();
        m.contains("kms") || m.contains("key management")
    });
    if let Some(code) = code {
        if THROTTLING_CODES.contains(&code) {
            return Cause::Throttled;
        }
        if let Some(kms) = code.strip_prefix("KMS.") {
            return if kms.contains("Throttl") || kms.contains("LimitExceeded") {
                Cause::Throttled
            } else if kms.contains("Internal")
                || kms.contains("DependencyTimeout")
                || kms.contains("Unavailable")
            {
                Cause::Unavailable
            } else {
                Cause::Kms
            };
        }
        if UNAVAILABLE_CODES.contains(&code) {
            return Cause::Unavailable;
        }
        if KMS_CODES.contains(&code) {
            return Cause::Kms;
        }
        if ACCESS_CODES.contains(&code) {
            return if mentions_kms {
                Cause::Kms
            } else {
                Cause::AccessDenied
            };
        }
        if CREDENTIAL_CODES.contains(&code) {
            return Cause::Credentials;
        }
        if REGION_CODES.contains(&code) {
            return Cause::WrongRegion;
        }
        match code {
            "NoSuchBucket" | "ResourceNotFoundException" => return Cause::NotFound,
            "RequestTimeTooSkewed" => return Cause::ClockSkew,
            "ConditionalCheckFailedException" => return Cause::ConditionFailed,
            "InvalidBucketName" | "InvalidArgumentException" | "InvalidParameterException" => {
                return Cause::Invalid;
            }
            "InvalidArgument" | "InvalidRequest" | "InvalidEncryptionAlgorithmError"
                if mentions_kms =>
            {
                return Cause::Kms;
            }
            _ => {}
        }
    }
    // Errors without a body (HEAD requests) or with a code not listed above. A 404 of a named
    // object (or version) is about that object, not the bucket.
    let object_level = matches!(code, Some("NoSuchKey" | "NoSuchVersion"));
    match status {
        Some(429 | 503) => Cause::Throttled,
        Some(408 | 500..=599) => Cause::Unavailable,
        Some(404) if !object_level => Cause::NotFound,
        Some(403) => Cause::AccessDenied,
        Some(301 | 307) => Cause::WrongRegion,
        _ => Cause::Rejected,
    }
}

/// A classified SDK error: its cause and what the response said, for the service's message.
#[derive(Debug, Clone)]
pub struct Failure {
    pub cause: Cause,
    /// `HTTP <status> <code>: <message>`, or why no response came.
    pub detail: String,
    pub code: Option<String>,
    /// The `x-amz-bucket-region` header of an S3 response, when present.
    pub bucket_region: Option<String>,
}

impl Failure {
    /// Classifies the error left after the SDK's retries.
    pub fn of<E>(err: &SdkError<E, HttpResponse>) -> Failure
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        match err {
            SdkError::ServiceError(_) | SdkError::ResponseError(_) => {
                let status = err.raw_response().map(|r| r.status().as_u16());
                let bucket_region = err
                    .raw_response()
                    .and_then(|r| r.headers().get("x-amz-bucket-region"))
                    .map(str::to_string);
                // An unparseable response keeps a configuration cause (403, 404...) and is
                // transient otherwise.
                let cause = match (err, classify(err.code(), err.message(), status)) {
                    (SdkError::ResponseError(_), Cause::Rejected) => Cause::Unavailable,
                    (_, cause) => cause,
                };
                let mut detail = match status {
                    Some(s) => format!("HTTP {s}"),
                    None => "no response".to_string(),
                };
                if let Some(c) = err.code() {
                    detail.push_str(&format!(" {c}"));
                }
                if let Some(m) = err.message().filter(|m| !m.is_empty()) {
                    detail.push_str(&format!(": {m}"));
                }
                Failure {
                    cause,
                    detail,
                    code: err.code().map(str::to_string),
                    bucket_region,
                }
            }
            SdkError::TimeoutError(_) => Failure::without_response(Cause::Unavailable, "timed out"),
            SdkError::DispatchFailure(d) => {
                let chain = error_chain(err);
                let cause = if d.is_io() || d.is_timeout() {
                    Cause::Unavailable
                } else if let Some(c) = credentials_cause(&chain) {
                    c
                } else if d.is_user() {
                    Cause::Endpoint
                } else {
                    Cause::Unavailable
                };
                Failure::without_response(cause, &format!("request not sent: {chain}"))
            }
            SdkError::ConstructionFailure(_) => Failure::without_response(
                Cause::Rejected,
                &format!("request not built: {}", error_chain(err)),
            ),
            _ => Failure::without_response(Cause::Unavailable, &error_chain(err)),
        }
    }

    fn without_response(cause: Cause, detail: &str) -> Failure {
        Failure {
            cause,
            detail: detail.to_string(),
            code: None,
            bucket_region: None,
        }
    }

    pub fn kind(&self) -> ErrorKind {
        self.cause.kind()
    }
}

/// The error and its causes on one line, each once.
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    crate::error::with_causes(err.to_string(), err.source())
}

/// Credential resolution fails before a request is sent; the SDK reports it as a dispatch
/// failure whose `CredentialsError` is only visible as text. A provider that timed out or
/// failed to load is transient; a chain that found nothing is configuration.
fn credentials_cause(chain: &str) -> Option<Cause> {
    if chain.contains("credentials provider timed out")
        || chain.contains("an error occurred while loading credentials")
    {
        Some(Cause::Unavailable)
    } else if chain.contains("the credential provider was not enabled")
        || chain.contains("credential provider was not enabled")
        || chain.contains("no providers in chain provided credentials")
        || chain.contains("credentials provider was not properly configured")
    {
        Some(Cause::Credentials)
    } else {
        None
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use aws_smithy_runtime_api::client::result::ConnectorError;
    use aws_smithy_types::body::SdkBody;
    use aws_smithy_types::error::ErrorMetadata;

    #[test]
    fn classifies_codes_and_statuses_of_every_service() {
        use Cause::*;
        let cases: &[(Option<&str>, Option<&str>, u16, Cause)] = &[
            // S3
            (Some("SlowDown"), None, 503, Throttled),
            (Some("ThrottlingException"), None, 400, Throttled),
            (Some("RequestLimitExceeded"), None, 400, Throttled),
            (None, None, 503, Throttled),
            (None, None, 429, Throttled),
            (Some("InternalError"), None, 500, Unavailable),
            (None, None, 502, Unavailable),
            (Some("RequestTimeout"), None, 400, Unavailable),
            (Some("NoSuchUpload"), None, 404, Unavailable),
            (Some("OperationAborted"), None, 409, Unavailable),
            (Some("NoSuchBucket"), None, 404, NotFound),
            (None, None, 404, NotFound),
            (Some("NotFound"), None, 404, NotFound),
            (
                Some("AccessDenied"),
                Some("Access Denied"),
                403,
                AccessDenied,
            ),
            (None, None, 403, AccessDenied),
            (Some("AllAccessDisabled"), None, 403, AccessDenied),
            (Some("InvalidAccessKeyId"), None, 403, Credentials),
            (Some("SignatureDoesNotMatch"), None, 403, Credentials),
            (Some("ExpiredToken"), None, 400, Credentials),
            (Some("RequestTimeTooSkewed"), None, 403, ClockSkew),
            (Some("PermanentRedirect"), None, 301, WrongRegion),
            (None, None, 301, WrongRegion),
            (Some("AuthorizationHeaderMalformed"), None, 400, WrongRegion),
            (Some("KMS.NotFoundException"), None, 400, Kms),
            (Some("KMS.DisabledException"), None, 400, Kms),
            (Some("KMS.ThrottlingException"), None, 400, Throttled),
            (Some("KMS.KMSInternalException"), None, 500, Unavailable),
            (
                Some("AccessDenied"),
                Some("User is not authorized to perform: kms:GenerateDataKey"),
                403,
                Kms,
            ),
            (
                Some("InvalidArgument"),
                Some("Invalid arn us-east-1 for KMS"),
                400,
                Kms,
            ),
            (
                Some("InvalidArgument"),
                Some("Part number must be an integer"),
                400,
                Rejected,
            ),
            (Some("InvalidBucketName"), None, 400, Invalid),
            (Some("EntityTooSmall"), None, 400, Rejected),
            (Some("NoSuchKey"), None, 404, Rejected),
            (Some("MalformedXML"), None, 400, Rejected),
            // DynamoDB
            (Some("AccessDeniedException"), None, 400, AccessDenied),
            (Some("UnrecognizedClientException"), None, 400, Credentials),
            (Some("ResourceNotFoundException"), None, 400, NotFound),
            (
                Some("ProvisionedThroughputExceededException"),
                None,
                400,
                Throttled,
            ),
            (Some("InternalServerError"), None, 500, Unavailable),
            (Some("TransactionConflictException"), None, 400, Unavailable),
            (
                Some("ConditionalCheckFailedException"),
                None,
                400,
                ConditionFailed,
            ),
            (Some("ValidationException"), None, 400, Rejected),
            // Kinesis
            (Some("ExpiredIteratorException"), None, 400, Unavailable),
            (Some("ExpiredNextTokenException"), None, 400, Unavailable),
            (Some("LimitExceededException"), None, 400, Throttled),
            (Some("KMSThrottlingException"), None, 400, Throttled),
            (Some("KMSDisabledException"), None, 400, Kms),
            (Some("InvalidArgumentException"), None, 400, Invalid),
            (Some("ResourceInUseException"), None, 400, Unavailable),
            // Secrets Manager
            (Some("DecryptionFailure"), None, 400, Kms),
            (Some("InvalidParameterException"), None, 400, Invalid),
        ];
        for (code, msg, status, want) in cases {
            assert_eq!(
                classify(*code, *msg, Some(*status)),
                *want,
                "{code:?} {msg:?} {status}"
            );
        }
        assert_eq!(Throttled.kind(), ErrorKind::Transient);
        assert_eq!(Unavailable.kind(), ErrorKind::Transient);
        for c in [
            NotFound,
            AccessDenied,
            Credentials,
            ClockSkew,
            WrongRegion,
            Kms,
            Invalid,
            Endpoint,
        ] {
            assert_eq!(c.kind(), ErrorKind::Config);
        }
        assert_eq!(ConditionFailed.kind(), ErrorKind::Conflict);
        assert_eq!(Rejected.kind(), ErrorKind::Fatal);
    }

    #[derive(Debug)]
    struct Generic(ErrorMetadata);
    impl std::fmt::Display for Generic {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("service error")
        }
    }
    impl std::error::Error for Generic {}
    impl ProvideErrorMetadata for Generic {
        fn meta(&self) -> &ErrorMetadata {
            &self.0
        }
    }

    fn service(code: &str, message: &str, status: u16) -> SdkError<Generic, HttpResponse> {
        let mut r = HttpResponse::new(status.try_into().unwrap(), SdkBody::empty());
        r.headers_mut().insert("x-amz-bucket-region", "us-west-2");
        SdkError::service_error(
            Generic(ErrorMetadata::builder().code(code).message(message).build()),
            r,
        )
    }

    #[test]
    fn failures_carry_detail_and_cause() {
        let f = Failure::of(&service("SlowDown", "reduce your request rate", 503));
        assert_eq!(f.cause, Cause::Throttled);
        assert_eq!(f.detail, "HTTP 503 SlowDown: reduce your request rate");
        assert_eq!(f.bucket_region.as_deref(), Some("us-west-2"));
        assert_eq!(f.code.as_deref(), Some("SlowDown"));

        let timeout: SdkError<Generic, HttpResponse> =
            SdkError::timeout_error(std::io::Error::other("attempt timed out"));
        assert_eq!(Failure::of(&timeout).kind(), ErrorKind::Transient);

        let io: SdkError<Generic, HttpResponse> = SdkError::dispatch_failure(ConnectorError::io(
            Box::new(std::io::Error::other("connection refused")),
        ));
        assert_eq!(Failure::of(&io).kind(), ErrorKind::Transient);

        let creds: SdkError<Generic, HttpResponse> =
            SdkError::dispatch_failure(ConnectorError::other(
                Box::new(std::io::Error::other(
                    "failed to resolve identity: no providers in chain provided credentials",
                )),
                None,
            ));
        assert_eq!(Failure::of(&creds).cause, Cause::Credentials);

        let loading: SdkError<Generic, HttpResponse> =
            SdkError::dispatch_failure(ConnectorError::other(
                Box::new(std::io::Error::other(
                    "an error occurred while loading credentials",
                )),
                None,
            ));
        assert_eq!(Failure::of(&loading).cause, Cause::Unavailable);

        let user: SdkError<Generic, HttpResponse> = SdkError::dispatch_failure(
            ConnectorError::user(Box::new(std::io::Error::other("invalid URI"))),
        );
        assert_eq!(Failure::of(&user).cause, Cause::Endpoint);

        let built: SdkError<Generic, HttpResponse> =
            SdkError::construction_failure(std::io::Error::other("missing field"));
        assert_eq!(Failure::of(&built).kind(), ErrorKind::Fatal);
    }
}

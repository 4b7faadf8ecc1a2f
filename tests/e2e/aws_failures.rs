//! Failure tests with output to S3 and positions in DynamoDB (local emulator): being written.

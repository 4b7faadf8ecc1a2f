import * as path from 'node:path';
import {
  Aws,
  CfnCondition,
  CfnOutput,
  CfnParameter,
  CfnParameterProps,
  CfnResource,
  Duration,
  Fn,
  RemovalPolicy,
  Size,
  Stack,
  StackProps,
  Token,
  Validations,
} from 'aws-cdk-lib';
import * as cloudwatch from 'aws-cdk-lib/aws-cloudwatch';
import * as dynamodb from 'aws-cdk-lib/aws-dynamodb';
import * as ec2 from 'aws-cdk-lib/aws-ec2';
import * as ecs from 'aws-cdk-lib/aws-ecs';
import * as glue from 'aws-cdk-lib/aws-glue';
import * as iam from 'aws-cdk-lib/aws-iam';
import * as kinesis from 'aws-cdk-lib/aws-kinesis';
import * as lambda from 'aws-cdk-lib/aws-lambda';
import * as logs from 'aws-cdk-lib/aws-logs';
import * as s3 from 'aws-cdk-lib/aws-s3';
import * as sns from 'aws-cdk-lib/aws-sns';
import * as sqs from 'aws-cdk-lib/aws-sqs';
import { Construct, IConstruct } from 'constructs';

export interface TidemarkStackProps extends StackProps {
  /** Directory holding `<binary>/bootstrap` for each function (cargo lambda's target/lambda). */
  readonly lambdaAssetRoot: string;
}

/**
 * The stack of template.yaml, resource for resource: logical ids, types and properties follow
 * the SAM template after its transform (infra/deploy/compare.py checks it). Constructs that
 * would add resources of their own (grants, bucket notifications, log retention) are avoided.
 */
export class TidemarkStack extends Stack {
  constructor(scope: Construct, id: string, props: TidemarkStackProps) {
    super(scope, id, props);

    // Parameters: names, types and constraints as in template.yaml.
    const param = (name: string, p: CfnParameterProps) => new CfnParameter(this, name, p);
    const pipelineName = param('PipelineName', {
      type: 'String',
      allowedPattern: '^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$',
      description:
        'Pipeline name: names the positions in DynamoDB, the output folder <OutputPrefix>/<PipelineName>/ and the Pipeline dimension of the tidemark metrics.',
    });
    param('OutputPrefix', {
      type: 'String',
      default: 'cdc',
      allowedPattern: '^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$',
      description: 'Key prefix of the output in the data bucket, without leading or trailing slash.',
    });
    const baselinePrefix = param('BaselinePrefix', {
      type: 'String',
      default: 'baselines/',
      allowedPattern: '^([A-Za-z0-9_.-]+/)+$',
      description:
        'Key prefix (ending in /) where baseline objects are uploaded; each new object version triggers the baseline function. Must not overlap OutputPrefix.',
    });
    const baselineTable = param('BaselineTable', {
      type: 'String',
      default: '',
      allowedPattern: '^$|^[^.]+\\.[^.]+$',
      description:
        "Table (schema.table) every baseline object fills. Empty: the object's tidemark-table metadata, else baseline.<file name>.",
    });
    const recordFormat = param('RecordFormat', {
      type: 'String',
      default: 'auto',
      allowedValues: ['auto', 'envelope', 'debezium', 'dms', 'dynamodb'],
      description: 'Format of the Kinesis records (auto detects per record).',
    });
    const architecture = param('Architecture', {
      type: 'String',
      default: 'x86_64',
      allowedValues: ['x86_64', 'arm64'],
      description:
        'CPU architecture of both functions and of the worker task; build the functions and WorkerImageUri for it.',
    });
    const batchSize = param('BatchSize', {
      type: 'Number',
      default: 1000,
      minValue: 1,
      maxValue: 10000,
      description: 'Most Kinesis records per kinesis-ingest invocation.',
    });
    const streamRetentionHours = param('StreamRetentionHours', {
      type: 'Number',
      default: 168,
      minValue: 24,
      maxValue: 8760,
      description:
        'Retention of the Kinesis stream; bounds how long an outage, or a batch kinesis-ingest keeps failing on, can hold a shard up without losing changes.',
    });
    const deadLetterRetentionDays = param('DeadLetterRetentionDays', {
      type: 'Number',
      default: 30,
      minValue: 1,
      description: 'Days dead letters (<OutputPrefix>/<PipelineName>/_dead_letter/) are kept.',
    });
    const logRetentionDays = param('LogRetentionDays', {
      type: 'Number',
      default: '30',
      allowedValues: [
        '1', '3', '5', '7', '14', '30', '60', '90', '120', '150', '180', '365', '400', '545', '731',
        '1096', '1827', '2192', '2557', '2922', '3288', '3653',
      ],
      description: "Retention of the functions' and the worker's log groups.",
    });
    const iteratorAgeAlarmMs = param('IteratorAgeAlarmMs', {
      type: 'Number',
      default: 300000,
      minValue: 1000,
      description:
        "Alarm when kinesis-ingest's IteratorAge (age of the newest record it read) exceeds this for 5 minutes.",
    });
    const workerLagAlarmSeconds = param('WorkerLagAlarmSeconds', {
      type: 'Number',
      default: 300,
      minValue: 1,
      description:
        "Alarm when the worker's LagSeconds (wall clock minus the source commit time) exceeds this for 5 minutes.",
    });
    const workerImageUri = param('WorkerImageUri', {
      type: 'String',
      description:
        'Container image of the tidemark worker (the tidemark binary on PATH), e.g. <account>.dkr.ecr.<region>.amazonaws.com/tidemark:<tag>.',
    });
    const workerCpu = param('WorkerCpu', {
      type: 'String',
      default: '512',
      allowedValues: ['256', '512', '1024', '2048', '4096', '8192', '16384'],
      description: 'Worker task CPU units; must form a valid Fargate combination with WorkerMemory.',
    });
    const workerMemory = param('WorkerMemory', {
      type: 'String',
      default: '1024',
      allowedPattern: '^[0-9]+$',
      description: 'Worker task memory in MiB; must form a valid Fargate combination with WorkerCpu.',
    });
    // An ARN, not a secret: NoEcho would only hide which secret the worker reads.
    Validations.of(this).acknowledge({ id: 'CloudFormation-Validate::W2509', reason: 'an ARN, not a secret' });
    const sourceUrlSecretArn = param('SourceUrlSecretArn', {
      type: 'String',
      allowedPattern: '^arn:aws[a-z-]*:secretsmanager:.+$',
      description:
        'Secrets Manager secret whose string value is the source URL (postgres://... or mysql://..., credentials included); given to the worker as TIDEMARK_SOURCE_URL. Encrypted with the aws/secretsmanager key (a customer-managed key needs kms:Decrypt for the execution role).',
    });
    const vpcId = param('VpcId', {
      type: 'AWS::EC2::VPC::Id',
      description: 'VPC of the worker task.',
    });
    const subnetIds = param('SubnetIds', {
      type: 'List<AWS::EC2::Subnet::Id>',
      description:
        'Subnets of the worker task; they must reach the source database, and S3, DynamoDB, Kinesis, ECR, CloudWatch Logs and Secrets Manager (NAT or VPC endpoints, or public with AssignPublicIp).',
    });
    const assignPublicIp = param('AssignPublicIp', {
      type: 'String',
      default: 'DISABLED',
      allowedValues: ['DISABLED', 'ENABLED'],
      description: 'Give the worker task a public IP (only for public subnets without NAT).',
    });
    const alarmEmail = param('AlarmEmail', {
      type: 'String',
      default: '',
      description:
        "Email address subscribed to the alarms' SNS topic. Empty creates no topic and leaves the alarms without actions.",
    });
    const glueDatabaseName = param('GlueDatabaseName', {
      type: 'String',
      default: '',
      allowedPattern: '^[a-z0-9_]{0,255}$',
      description:
        "Glue database for the pipeline's tables. Empty uses the stack name with - replaced by _.",
    });

    const group = (label: string, ...parameters: string[]) => ({ Label: { default: label }, Parameters: parameters });
    this.templateOptions.metadata = {
      'AWS::CloudFormation::Interface': {
        ParameterGroups: [
          group('Pipeline', 'PipelineName', 'OutputPrefix', 'BaselinePrefix', 'BaselineTable', 'RecordFormat'),
          group('Lambda', 'Architecture', 'BatchSize', 'StreamRetentionHours'),
          group('Worker', 'WorkerImageUri', 'WorkerCpu', 'WorkerMemory', 'SourceUrlSecretArn', 'VpcId', 'SubnetIds', 'AssignPublicIp'),
          group('Operations', 'DeadLetterRetentionDays', 'LogRetentionDays', 'IteratorAgeAlarmMs', 'WorkerLagAlarmSeconds', 'AlarmEmail', 'GlueDatabaseName'),
        ],
      },
    };

    const hasAlarmEmail = new CfnCondition(this, 'HasAlarmEmail', {
      expression: Fn.conditionNot(Fn.conditionEquals(alarmEmail.valueAsString, '')),
    });
    const hasGlueDatabaseName = new CfnCondition(this, 'HasGlueDatabaseName', {
      expression: Fn.conditionNot(Fn.conditionEquals(glueDatabaseName.valueAsString, '')),
    });
    const isArm64 = new CfnCondition(this, 'IsArm64', {
      expression: Fn.conditionEquals(architecture.valueAsString, 'arm64'),
    });

    // Data bucket. Its name derives from the stack id so that the baseline function's role and
    // environment need no reference to the bucket, whose notification depends on that function.
    const stackUuid = Fn.select(2, Fn.split('/', Aws.STACK_ID));
    const bucketName = Fn.join('-', ['tidemark', stackUuid]);
    const bucketArn = (suffix: string) =>
      Fn.sub(`arn:\${AWS::Partition}:s3:::tidemark-\${Id}${suffix}`, { Id: stackUuid });

    const bucket = new s3.Bucket(this, 'DataBucket', {
      bucketName,
      versioned: true,
      encryption: s3.BucketEncryption.KMS_MANAGED,
      bucketKeyEnabled: true,
      blockPublicAccess: s3.BlockPublicAccess.BLOCK_ALL,
      objectOwnership: s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
      enforceSSL: true,
      removalPolicy: RemovalPolicy.RETAIN,
      lifecycleRules: [
        {
          id: 'dead-letters',
          prefix: Fn.sub('${OutputPrefix}/${PipelineName}/_dead_letter/'),
          expiration: Duration.days(deadLetterRetentionDays.valueAsNumber),
        },
        {
          id: 'housekeeping',
          noncurrentVersionExpiration: Duration.days(30),
          abortIncompleteMultipartUploadAfter: Duration.days(7),
          expiredObjectDeleteMarker: true,
        },
      ],
    });
    sameId(bucket, 'DataBucket');
    sameId(bucket.policy!, 'DataBucketPolicy');

    const table = new dynamodb.Table(this, 'PositionsTable', {
      partitionKey: { name: 'pk', type: dynamodb.AttributeType.STRING },
      billingMode: dynamodb.BillingMode.PAY_PER_REQUEST,
      pointInTimeRecoverySpecification: { pointInTimeRecoveryEnabled: true },
      encryption: dynamodb.TableEncryption.AWS_MANAGED,
      removalPolicy: RemovalPolicy.RETAIN,
    });
    sameId(table, 'PositionsTable');

    const stream = new kinesis.Stream(this, 'ChangeStream', {
      streamMode: kinesis.StreamMode.ON_DEMAND,
      encryption: kinesis.StreamEncryption.MANAGED,
      retentionPeriod: Duration.hours(streamRetentionHours.valueAsNumber),
      removalPolicy: RemovalPolicy.DESTROY,
    });
    sameId(stream, 'ChangeStream');

    const failureQueue = new sqs.Queue(this, 'FailureQueue', {
      encryption: sqs.QueueEncryption.SQS_MANAGED,
      retentionPeriod: Duration.days(14),
    });
    sameId(failureQueue, 'FailureQueue');

    const logGroup = (id: string) => {
      const group = new logs.LogGroup(this, id, { removalPolicy: RemovalPolicy.DESTROY });
      sameId<logs.CfnLogGroup>(group, id).retentionInDays = logRetentionDays.valueAsNumber;
      return group;
    };
    const ingestLogs = logGroup('IngestLogGroup');
    const baselineLogs = logGroup('BaselineLogGroup');
    const workerLogs = logGroup('WorkerLogGroup');

    // The positions table: what the functions call is DescribeTable when they open the store,
    // GetItem and (conditional) UpdateItem for every load and save, DeleteItem for the parts of
    // a checkpoint too large for one item once replaced (infra/deploy/compare.py checks
    // kinesis-ingest's). The worker also deletes items for `tidemark reset`.
    const positionsAccess = (...actions: string[]) =>
      new iam.PolicyStatement({ actions: actions.map((a) => `dynamodb:${a}`), resources: [table.tableArn] });
    const positionsCalls = ['DescribeTable', 'GetItem', 'UpdateItem', 'DeleteItem'];
    const objectWrites = ['s3:PutObject', 's3:GetObject', 's3:DeleteObject', 's3:AbortMultipartUpload'];
    const writeLogs = (group: logs.LogGroup) =>
      new iam.PolicyStatement({
        actions: ['logs:CreateLogStream', 'logs:PutLogEvents'],
        resources: [group.logGroupArn],
      });
    const role = (id: string, service: string, policyName: string, statements: iam.PolicyStatement[]) => {
      const r = new iam.Role(this, id, {
        assumedBy: new iam.ServicePrincipal(service),
        inlinePolicies: { [policyName]: new iam.PolicyDocument({ statements }) },
      });
      sameId(r, id);
      return r;
    };

    const ingestRole = role('IngestRole', 'lambda.amazonaws.com', 'kinesis-ingest', [
      writeLogs(ingestLogs),
      new iam.PolicyStatement({
        actions: [
          'kinesis:DescribeStream',
          'kinesis:DescribeStreamSummary',
          'kinesis:GetRecords',
          'kinesis:GetShardIterator',
          'kinesis:ListShards',
        ],
        resources: [stream.streamArn],
      }),
      // No resource-level permissions exist for ListStreams; Lambda's Kinesis mapping lists it.
      new iam.PolicyStatement({ actions: ['kinesis:ListStreams'], resources: ['*'] }),
      new iam.PolicyStatement({
        actions: objectWrites,
        resources: [Fn.sub('${DataBucket.Arn}/${OutputPrefix}/*')],
      }),
      new iam.PolicyStatement({
        actions: ['s3:ListBucket'],
        resources: [bucket.bucketArn],
        conditions: { StringLike: { 's3:prefix': Fn.sub('${OutputPrefix}/*') } },
      }),
      positionsAccess(...positionsCalls),
      new iam.PolicyStatement({ actions: ['sqs:SendMessage'], resources: [failureQueue.queueArn] }),
    ]);

    const baselineRole = role('BaselineRole', 'lambda.amazonaws.com', 'baseline', [
      writeLogs(baselineLogs),
      new iam.PolicyStatement({
        actions: ['s3:GetObject', 's3:GetObjectVersion'],
        resources: [bucketArn('/${BaselinePrefix}*')],
      }),
      new iam.PolicyStatement({ actions: objectWrites, resources: [bucketArn('/${OutputPrefix}/*')] }),
      // ListBucket also turns the GET of a missing <key>.manifest.json into NoSuchKey instead of AccessDenied.
      new iam.PolicyStatement({
        actions: ['s3:ListBucket'],
        resources: [bucketArn('')],
        conditions: {
          StringLike: { 's3:prefix': [Fn.sub('${BaselinePrefix}*'), Fn.sub('${OutputPrefix}/*')] },
        },
      }),
      positionsAccess(...positionsCalls),
    ]);

    const lambdaArchitecture = lambda.Architecture.custom(architecture.valueAsString);
    const code = (binary: string) => lambda.Code.fromAsset(path.join(props.lambdaAssetRoot, binary));

    const ingest = new lambda.Function(this, 'IngestFunction', {
      runtime: lambda.Runtime.PROVIDED_AL2023,
      handler: 'bootstrap',
      code: code('kinesis-ingest'),
      architecture: lambdaArchitecture,
      description: Fn.sub('Writes the ${PipelineName} Kinesis changes as Parquet'),
      role: ingestRole,
      memorySize: 1024,
      timeout: Duration.seconds(300),
      logGroup: ingestLogs,
      environment: {
        TIDEMARK_PIPELINE: pipelineName.valueAsString,
        TIDEMARK_OUTPUT: Fn.sub('s3://${DataBucket}/${OutputPrefix}'),
        TIDEMARK_POSITIONS: Fn.sub('dynamodb://${PositionsTable}'),
        TIDEMARK_FORMAT: recordFormat.valueAsString,
        TIDEMARK_LOG: 'info',
      },
    });
    // lambda.Function adds DependsOn its role, which Role's GetAtt implies (cfn-lint W3005).
    sameId(ingest, 'IngestFunction').addDeletionOverride('DependsOn');

    // A batch is never discarded: retries and record age are infinite (-1, not a parameter), so
    // a failing batch holds its shard until it is written and no later batch moves the shard's
    // position past it. Records the function cannot decode or encode are not failures: it writes
    // them to _dead_letter/ itself. Lambda discards records only when they expire from the stream
    // (StreamRetentionHours) while their batch still fails; the on-failure destination then gets
    // the batch's metadata (FailureQueueAlarm). Bisecting isolates a record that crashes or times
    // out the function; ReportBatchItemFailures retries from the first record not durable.
    new lambda.CfnEventSourceMapping(this, 'IngestEventSourceMapping', {
      functionName: ingest.functionName,
      eventSourceArn: stream.streamArn,
      startingPosition: 'TRIM_HORIZON',
      batchSize: batchSize.valueAsNumber,
      parallelizationFactor: 1,
      bisectBatchOnFunctionError: true,
      functionResponseTypes: ['ReportBatchItemFailures'],
      maximumRetryAttempts: -1,
      maximumRecordAgeInSeconds: -1,
      destinationConfig: { onFailure: { destination: failureQueue.queueArn } },
    });

    const baseline = new lambda.Function(this, 'BaselineFunction', {
      runtime: lambda.Runtime.PROVIDED_AL2023,
      handler: 'bootstrap',
      code: code('baseline'),
      architecture: lambdaArchitecture,
      description: Fn.sub('Applies ${PipelineName} baseline object versions as Parquet snapshots'),
      role: baselineRole,
      memorySize: 1024,
      timeout: Duration.seconds(900),
      // The object is downloaded to /tmp before it is converted.
      ephemeralStorageSize: Size.mebibytes(10240),
      logGroup: baselineLogs,
      environment: {
        TIDEMARK_PIPELINE: pipelineName.valueAsString,
        TIDEMARK_OUTPUT: Fn.sub('s3://tidemark-${Id}/${OutputPrefix}', { Id: stackUuid }),
        TIDEMARK_POSITIONS: Fn.sub('dynamodb://${PositionsTable}'),
        TIDEMARK_BASELINE_TABLE: baselineTable.valueAsString,
        TIDEMARK_LOG: 'info',
      },
    });
    sameId(baseline, 'BaselineFunction').addDeletionOverride('DependsOn');

    // What SAM's S3 event generates; bucket.addEventNotification would add a custom resource.
    const baselineInvoke = new lambda.CfnPermission(this, 'BaselineFunctionBaselineUploadedPermission', {
      action: 'lambda:InvokeFunction',
      functionName: baseline.functionName,
      principal: 's3.amazonaws.com',
      sourceAccount: Aws.ACCOUNT_ID,
    });
    const cfnBucket = bucket.node.defaultChild as s3.CfnBucket;
    cfnBucket.notificationConfiguration = {
      lambdaConfigurations: [
        {
          event: 's3:ObjectCreated:*',
          function: baseline.functionArn,
          filter: { s3Key: { rules: [{ name: 'prefix', value: baselinePrefix.valueAsString }] } },
        },
      ],
    };
    cfnBucket.node.addDependency(baselineInvoke);

    // Worker.
    const cluster = new ecs.CfnCluster(this, 'WorkerCluster');

    const securityGroup = new ec2.CfnSecurityGroup(this, 'WorkerSecurityGroup', {
      groupDescription: 'tidemark worker (egress only)',
      vpcId: vpcId.valueAsString,
      securityGroupEgress: [
        { description: 'source database and AWS APIs', ipProtocol: '-1', cidrIp: '0.0.0.0/0' },
      ],
    });

    const executionRole = role('WorkerExecutionRole', 'ecs-tasks.amazonaws.com', 'worker-execution', [
      // The image may live in any repository; ECR's token call has no resource.
      new iam.PolicyStatement({
        actions: [
          'ecr:GetAuthorizationToken',
          'ecr:BatchCheckLayerAvailability',
          'ecr:GetDownloadUrlForLayer',
          'ecr:BatchGetImage',
        ],
        resources: ['*'],
      }),
      writeLogs(workerLogs),
      new iam.PolicyStatement({
        actions: ['secretsmanager:GetSecretValue'],
        resources: [sourceUrlSecretArn.valueAsString],
      }),
    ]);

    const taskRole = role('WorkerTaskRole', 'ecs-tasks.amazonaws.com', 'worker', [
      new iam.PolicyStatement({
        actions: objectWrites,
        resources: [Fn.sub('${DataBucket.Arn}/${OutputPrefix}/*')],
      }),
      new iam.PolicyStatement({
        actions: ['s3:ListBucket'],
        resources: [bucket.bucketArn],
        conditions: { StringLike: { 's3:prefix': Fn.sub('${OutputPrefix}/*') } },
      }),
      positionsAccess(...positionsCalls),
      new iam.PolicyStatement({
        actions: [
          'kinesis:PutRecord',
          'kinesis:PutRecords',
          'kinesis:ListShards',
          'kinesis:GetShardIterator',
          'kinesis:GetRecords',
          'kinesis:DescribeStreamSummary',
        ],
        resources: [stream.streamArn],
      }),
    ]);

    const env = (name: string, value: string) => ({ name, value });
    const taskDefinition = new ecs.CfnTaskDefinition(this, 'WorkerTaskDefinition', {
      requiresCompatibilities: ['FARGATE'],
      networkMode: 'awsvpc',
      cpu: workerCpu.valueAsString,
      memory: workerMemory.valueAsString,
      runtimePlatform: {
        operatingSystemFamily: 'LINUX',
        cpuArchitecture: Token.asString(Fn.conditionIf(isArm64.logicalId, 'ARM64', 'X86_64')),
      },
      executionRoleArn: executionRole.roleArn,
      taskRoleArn: taskRole.roleArn,
      containerDefinitions: [
        {
          name: 'worker',
          image: workerImageUri.valueAsString,
          essential: true,
          entryPoint: ['tidemark'],
          command: ['run'],
          // SIGTERM flushes and commits; the worker's own deadline stays below ECS's SIGKILL.
          stopTimeout: 120,
          environment: [
            env('TIDEMARK_PIPELINE', pipelineName.valueAsString),
            env('TIDEMARK_OUTPUT', Fn.sub('s3://${DataBucket}/${OutputPrefix}')),
            env('TIDEMARK_POSITIONS', Fn.sub('dynamodb://${PositionsTable}')),
            env('TIDEMARK_PUBLISH', Fn.sub('kinesis://${ChangeStream}')),
            env('TIDEMARK_LOG_FORMAT', 'json'),
            env('TIDEMARK_METRICS', 'emf'),
            env('TIDEMARK_STATE_HOME', '/var/lib/tidemark'),
            env('TIDEMARK_STOP_TIMEOUT_SECS', '110'),
          ],
          secrets: [{ name: 'TIDEMARK_SOURCE_URL', valueFrom: sourceUrlSecretArn.valueAsString }],
          healthCheck: {
            command: ['CMD', 'tidemark', 'health', '--pipeline', pipelineName.valueAsString],
            interval: 30,
            timeout: 10,
            retries: 3,
            startPeriod: 120,
          },
          logConfiguration: {
            logDriver: 'awslogs',
            options: {
              'awslogs-group': workerLogs.logGroupName,
              'awslogs-region': Aws.REGION,
              'awslogs-stream-prefix': 'worker',
            },
          },
        },
      ],
    });

    // One task per pipeline: a second would only stand by on the lease, so deployments stop the
    // old task (which commits on SIGTERM) before starting the new one.
    const service = new ecs.CfnService(this, 'WorkerService', {
      cluster: cluster.ref,
      taskDefinition: taskDefinition.ref,
      launchType: 'FARGATE',
      desiredCount: 1,
      deploymentConfiguration: {
        minimumHealthyPercent: 0,
        maximumPercent: 100,
        deploymentCircuitBreaker: { enable: true, rollback: true },
      },
      networkConfiguration: {
        awsvpcConfiguration: {
          subnets: subnetIds.valueAsList,
          securityGroups: [securityGroup.ref],
          assignPublicIp: assignPublicIp.valueAsString,
        },
      },
    });

    // Alarms.
    const topic = new sns.CfnTopic(this, 'AlarmTopic', {
      subscription: [{ protocol: 'email', endpoint: alarmEmail.valueAsString }],
    });
    topic.cfnOptions.condition = hasAlarmEmail;
    const actions = Token.asList(Fn.conditionIf(hasAlarmEmail.logicalId, [topic.ref], Aws.NO_VALUE));
    const alarm = (
      id: string,
      description: string,
      p: Pick<
        cloudwatch.CfnAlarmProps,
        'namespace' | 'metricName' | 'dimensions' | 'statistic' | 'period' | 'evaluationPeriods' | 'threshold'
      >,
    ) =>
      new cloudwatch.CfnAlarm(this, id, {
        alarmDescription: Fn.sub(description),
        ...p,
        comparisonOperator: 'GreaterThanThreshold',
        treatMissingData: 'notBreaching',
        alarmActions: actions,
        okActions: actions,
      });
    const fiveMinutes = { period: 300, evaluationPeriods: 1 };
    alarm('IngestIteratorAgeAlarm', '${PipelineName}: kinesis-ingest is falling behind the stream (IteratorAge).', {
      namespace: 'AWS/Lambda',
      metricName: 'IteratorAge',
      dimensions: [{ name: 'FunctionName', value: ingest.functionName }],
      statistic: 'Maximum',
      period: 60,
      evaluationPeriods: 5,
      threshold: iteratorAgeAlarmMs.valueAsNumber,
    });
    alarm(
      'IngestErrorsAlarm',
      '${PipelineName}: kinesis-ingest invocations failed; the failing batch is bisected and retried until it is written, and its shard waits.',
      {
        namespace: 'AWS/Lambda',
        metricName: 'Errors',
        dimensions: [{ name: 'FunctionName', value: ingest.functionName }],
        statistic: 'Sum',
        ...fiveMinutes,
        threshold: 0,
      },
    );
    alarm('BaselineErrorsAlarm', '${PipelineName}: a baseline object could not be applied.', {
      namespace: 'AWS/Lambda',
      metricName: 'Errors',
      dimensions: [{ name: 'FunctionName', value: baseline.functionName }],
      statistic: 'Sum',
      ...fiveMinutes,
      threshold: 0,
    });
    alarm('DeadLettersAlarm', '${PipelineName}: records went to ${OutputPrefix}/${PipelineName}/_dead_letter/.', {
      namespace: 'tidemark',
      metricName: 'DeadLetters',
      dimensions: [{ name: 'Pipeline', value: pipelineName.valueAsString }],
      statistic: 'Sum',
      ...fiveMinutes,
      threshold: 0,
    });
    // LagSeconds comes with each committed batch, so an idle source reports nothing: missing is fine.
    alarm('WorkerLagAlarm', '${PipelineName}: the worker is behind its source (LagSeconds).', {
      namespace: 'tidemark',
      metricName: 'LagSeconds',
      dimensions: [{ name: 'Pipeline', value: pipelineName.valueAsString }],
      statistic: 'Maximum',
      period: 60,
      evaluationPeriods: 5,
      threshold: workerLagAlarmSeconds.valueAsNumber,
    });
    alarm(
      'FailureQueueAlarm',
      "${PipelineName}: Kinesis records expired from the stream before kinesis-ingest could write them; their batch's metadata is in the failure queue.",
      {
        namespace: 'AWS/SQS',
        metricName: 'ApproximateNumberOfMessagesVisible',
        dimensions: [{ name: 'QueueName', value: failureQueue.queueName }],
        statistic: 'Maximum',
        ...fiveMinutes,
        threshold: 0,
      },
    );

    // Glue: the fixed-schema outputs. Per-table change and snapshot tables come from `tidemark ddl`.
    const database = new glue.CfnDatabase(this, 'GlueDatabase', {
      catalogId: Aws.ACCOUNT_ID,
      databaseInput: {
        name: Token.asString(
          Fn.conditionIf(
            hasGlueDatabaseName.logicalId,
            glueDatabaseName.valueAsString,
            Fn.join('_', Fn.split('-', Aws.STACK_NAME)),
          ),
        ),
        description: Fn.sub(
          'tidemark pipeline ${PipelineName}; per-table change and snapshot tables come from `tidemark ddl`.',
        ),
      },
    });
    // The empty default of GlueDatabaseName selects the other branch of the Fn::If.
    Validations.of(database).acknowledge({ id: 'CloudFormation-Validate::W1030', reason: 'guarded by HasGlueDatabaseName' });
    const jsonStorage = (location: string, columns: glue.CfnTable.ColumnProperty[]) => ({
      location: Fn.sub(location),
      inputFormat: 'org.apache.hadoop.mapred.TextInputFormat',
      outputFormat: 'org.apache.hadoop.hive.ql.io.HiveIgnoreKeyTextOutputFormat',
      serdeInfo: { serializationLibrary: 'org.openx.data.jsonserde.JsonSerDe' },
      columns,
    });
    new glue.CfnTable(this, 'DeadLetterTable', {
      catalogId: Aws.ACCOUNT_ID,
      databaseName: database.ref,
      tableInput: {
        name: 'dead_letters',
        description:
          'Kinesis records that could not be written, with the reason and the record (base64). Queries must filter on shard.',
        tableType: 'EXTERNAL_TABLE',
        parameters: {
          classification: 'json',
          'projection.enabled': 'true',
          'projection.shard.type': 'injected',
          'storage.location.template': Fn.sub(
            's3://${DataBucket}/${OutputPrefix}/${PipelineName}/_dead_letter/shard=${!shard}/',
          ),
        },
        partitionKeys: [{ name: 'shard', type: 'string' }],
        storageDescriptor: jsonStorage('s3://${DataBucket}/${OutputPrefix}/${PipelineName}/_dead_letter/', [
          { name: 'pipeline', type: 'string' },
          { name: 'sequence_number', type: 'string' },
          { name: 'partition_key', type: 'string' },
          { name: 'arrival_ms', type: 'bigint' },
          { name: 'reason', type: 'string' },
          { name: 'data', type: 'string' },
        ]),
      },
    });
    new glue.CfnTable(this, 'SchemaHistoryTable', {
      catalogId: Aws.ACCOUNT_ID,
      databaseName: database.ref,
      tableInput: {
        name: 'schema_history',
        description: 'DDL statements of the captured tables, in the commit that carried them.',
        tableType: 'EXTERNAL_TABLE',
        parameters: { classification: 'json' },
        storageDescriptor: jsonStorage('s3://${DataBucket}/${OutputPrefix}/${PipelineName}/_schema_history/', [
          { name: 'position', type: 'string' },
          { name: 'commit_ts_us', type: 'bigint' },
          { name: 'database', type: 'string' },
          { name: 'statement', type: 'string' },
        ]),
      },
    });

    const output = (id: string, description: string, value: string) =>
      new CfnOutput(this, id, { description, value });
    output('DataBucketName', 'Data bucket holding the output and the baselines.', bucket.bucketName);
    output(
      'OutputUrl',
      'TIDEMARK_OUTPUT of the pipeline; captured tables land under <this>/<pipeline>/<schema>.<table>/ (changes/dt=YYYY-MM-DD/, snapshot/snapshot_id=<id>/); DdlCommand prints their Glue tables.',
      Fn.sub('s3://${DataBucket}/${OutputPrefix}'),
    );
    output(
      'BaselineUrl',
      'Upload baseline objects here (a new version triggers the baseline function).',
      Fn.sub('s3://${DataBucket}/${BaselinePrefix}'),
    );
    output(
      'PositionsTableName',
      'DynamoDB table of positions and leases (TIDEMARK_POSITIONS=dynamodb://<this>).',
      table.tableName,
    );
    output('StreamName', 'Kinesis stream the worker publishes to and kinesis-ingest reads.', stream.streamName);
    output('StreamArn', 'ARN of the Kinesis stream.', stream.streamArn);
    output('IngestFunctionArn', 'ARN of the kinesis-ingest function.', ingest.functionArn);
    output('BaselineFunctionArn', 'ARN of the baseline function.', baseline.functionArn);
    output('WorkerClusterName', 'ECS cluster of the worker.', cluster.ref);
    output('WorkerServiceName', 'ECS service running the worker.', service.attrName);
    output(
      'AthenaDatabaseName',
      'Glue database with the dead_letters and schema_history tables.',
      database.ref,
    );
    output(
      'DdlCommand',
      'Prints the Athena DDL of the captured tables (<schema>_<table>_changes, _snapshot and the _current view); run it again after a schema change or a re-snapshot.',
      Fn.sub('tidemark ddl --pipeline ${PipelineName} --output s3://${DataBucket}/${OutputPrefix} --database ${GlueDatabase}'),
    );
    output(
      'FailureQueueUrl',
      'SQS queue receiving the metadata of Kinesis batches whose records expired from the stream before kinesis-ingest could write them (retries are infinite: nothing else is discarded).',
      failureQueue.queueUrl,
    );
  }
}

/** Gives an L2 construct's resource the logical id template.yaml uses. */
function sameId<T extends CfnResource = CfnResource>(construct: IConstruct, logicalId: string): T {
  const resource = construct.node.defaultChild as T;
  resource.overrideLogicalId(logicalId);
  return resource;
}

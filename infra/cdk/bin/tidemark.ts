#!/usr/bin/env node
import * as path from 'node:path';
import { App } from 'aws-cdk-lib';
import { TidemarkStack } from '../lib/tidemark-stack';

const app = new App();
const lambdaAssetRoot = path.resolve(
  app.node.tryGetContext('lambdaAssetRoot') ?? path.join(__dirname, '..', '..', '..', 'target', 'lambda'),
);

new TidemarkStack(app, 'Tidemark', {
  lambdaAssetRoot,
  description:
    'tidemark: change data capture into Athena-ready Parquet, one pipeline per stack (CDK app of template.yaml; see its description).',
  analyticsReporting: false,
});

#!/usr/bin/env python3
"""Compares the SAM template, transformed offline, with the CDK app's synthesized template.

Fails (exit 1) when their resources differ in logical id, type or count, when their parameters
or outputs differ, or when either misses one of the properties the pipeline relies on (among
them: the Kinesis mapping never discards a batch, MaximumRetryAttempts and
MaximumRecordAgeInSeconds -1; kinesis-ingest's role allows exactly the DynamoDB actions it calls).

Usage: compare.py [--sam template.yaml] [--sam-out transformed.json] CDK_OUT_DIR
Needs aws-sam-translator and cfn-lint (both come with aws-sam-cli).
"""

import argparse
import glob
import json
import sys
from collections import Counter

import boto3
from cfnlint.decode import decode
from samtranslator.parser.parser import Parser
from samtranslator.translator.translator import Translator

# Names of AWS managed policies that template.yaml lists in a function's Policies, with their
# ARNs (the real transform looks them up in IAM). It lists none today.
MANAGED_POLICIES: dict[str, str] = {}

# Parameters that only the CDK's bootstrap-aware synthesizer adds.
CDK_ONLY_PARAMETERS = {"BootstrapVersion"}

# The DynamoDB actions kinesis-ingest calls at runtime (core/src/store/dynamodb.rs): DescribeTable
# when it opens the store, GetItem and conditional UpdateItem for every load and save, DeleteItem
# for the parts of a checkpoint too large for one item once a save replaced them. No CreateTable
# (the store is opened without --create-table), no PutItem or Query (nothing calls them). The
# role of the function the mapping invokes allows exactly these.
INGEST_DYNAMODB_ACTIONS = {
    "dynamodb:DescribeTable",
    "dynamodb:GetItem",
    "dynamodb:UpdateItem",
    "dynamodb:DeleteItem",
}


def sam_transform(path: str) -> dict:
    template, matches = decode(path)
    if matches:
        sys.exit(f"{path}: cannot be parsed:\n" + "\n".join(str(m) for m in matches))
    # Like `sam validate`: a local CodeUri is what `sam build` uploads; give it a stand-in.
    for scope in [template.get("Globals", {}).get("Function", {})] + [
        r.get("Properties", {})
        for r in template.get("Resources", {}).values()
        if r.get("Type") == "AWS::Serverless::Function"
    ]:
        if isinstance(scope.get("CodeUri"), str) and not scope["CodeUri"].startswith("s3://"):
            scope["CodeUri"] = "s3://placeholder/code.zip"
    # The region only names the partition of the ARNs SAM builds; no AWS call is made.
    translator = Translator(None, Parser(), boto_session=boto3.session.Session(region_name="us-east-1"))
    return translator.translate(template, parameter_values={}, get_managed_policy_map=lambda: MANAGED_POLICIES)


def cdk_template(out_dir: str) -> tuple[str, dict]:
    paths = glob.glob(f"{out_dir}/*.template.json")
    if len(paths) != 1:
        sys.exit(f"{out_dir}: expected one *.template.json, found {len(paths)}")
    with open(paths[0]) as f:
        return paths[0], json.load(f)


def table(rows: list[tuple], header: tuple) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()
    return "\n".join([line(header), line(tuple("-" * w for w in widths))] + [line(r) for r in rows])


def parameter_shape(p: dict) -> dict:
    """A parameter's contract, with numbers and strings alike (CDK writes AllowedValues as strings)."""
    keys = ["Type", "Default", "AllowedValues", "AllowedPattern", "MinValue", "MaxValue", "NoEcho"]
    norm = lambda v: [str(x) for x in v] if isinstance(v, list) else str(v)
    return {k: norm(p[k]) for k in keys if k in p}


def of_type(template: dict, type_: str) -> dict:
    return {k: r for k, r in template["Resources"].items() if r["Type"] == type_}


def get_att_target(value) -> str | None:
    """The logical id X of {"Fn::GetAtt": [X, "Arn"]} (or "X.Arn"), else None."""
    att = value.get("Fn::GetAtt") if isinstance(value, dict) else None
    if isinstance(att, str):
        att = att.split(".", 1)
    return att[0] if isinstance(att, list) and len(att) == 2 and att[1] == "Arn" else None


def role_statements(template: dict, role_id: str) -> tuple[list[dict], list[str]]:
    """Every policy statement that applies to the role: its inline policies and the policy
    resources naming it. With what else could grant it permissions (managed policies, NotAction)."""
    role = template["Resources"][role_id]["Properties"]
    statements = [s for p in role.get("Policies", []) for s in p["PolicyDocument"]["Statement"]]
    for r in template["Resources"].values():
        if r["Type"] in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy") and {"Ref": role_id} in r[
            "Properties"
        ].get("Roles", []):
            statements += r["Properties"]["PolicyDocument"]["Statement"]
    problems = []
    if role.get("ManagedPolicyArns"):
        problems.append(f"{role_id}: managed policies {role['ManagedPolicyArns']}")
    if any("NotAction" in s for s in statements):
        problems.append(f"{role_id}: a NotAction statement")
    return statements, problems


def allowed_actions(statements: list[dict]) -> set[str]:
    actions = set()
    for s in statements:
        if s.get("Effect") == "Allow":
            a = s.get("Action", [])
            actions |= {a} if isinstance(a, str) else set(a)
    return actions


def semantic_problems(template: dict) -> list[str]:
    problems = []

    def expect(ok: bool, what: str) -> None:
        if not ok:
            problems.append(what)

    mappings = of_type(template, "AWS::Lambda::EventSourceMapping")
    expect(len(mappings) == 1, f"one event source mapping (found {len(mappings)})")
    for name, r in mappings.items():
        p = r["Properties"]
        expect(p.get("ParallelizationFactor") == 1, f"{name}: ParallelizationFactor 1")
        expect(p.get("BisectBatchOnFunctionError") is True, f"{name}: BisectBatchOnFunctionError true")
        expect("ReportBatchItemFailures" in p.get("FunctionResponseTypes", []), f"{name}: ReportBatchItemFailures")
        expect(p.get("StartingPosition") == "TRIM_HORIZON", f"{name}: StartingPosition TRIM_HORIZON")
        # A batch is never discarded after retries, so no later batch moves the position past it:
        # both limits infinite, as literals (a parameter could make them finite).
        for key in ("MaximumRetryAttempts", "MaximumRecordAgeInSeconds"):
            expect(str(p.get(key)) == "-1", f"{name}: {key} -1 (found {json.dumps(p.get(key))})")
        # With infinite retries it only hears of records that expired from the stream unwritten.
        expect("OnFailure" in p.get("DestinationConfig", {}), f"{name}: an on-failure destination")

        function_id = p.get("FunctionName", {}).get("Ref") if isinstance(p.get("FunctionName"), dict) else None
        function = template["Resources"].get(function_id or "", {})
        role_id = get_att_target(function.get("Properties", {}).get("Role"))
        if function.get("Type") != "AWS::Lambda::Function" or role_id not in template["Resources"]:
            expect(False, f"{name}: invokes a function of the template whose Role is a role of the template")
            continue
        statements, role_problems = role_statements(template, role_id)
        problems.extend(role_problems)
        dynamodb = {a for a in allowed_actions(statements) if a == "*" or a.lower().startswith("dynamodb:")}
        expect(
            dynamodb == INGEST_DYNAMODB_ACTIONS,
            f"{role_id} (role of {function_id}): DynamoDB actions {sorted(INGEST_DYNAMODB_ACTIONS)}"
            f" (found {sorted(dynamodb)})",
        )
    for name, r in of_type(template, "AWS::DynamoDB::Table").items():
        pitr = r["Properties"].get("PointInTimeRecoverySpecification", {})
        expect(pitr.get("PointInTimeRecoveryEnabled") is True, f"{name}: point-in-time recovery")
        expect(r.get("DeletionPolicy") == "Retain", f"{name}: DeletionPolicy Retain")
    buckets = of_type(template, "AWS::S3::Bucket")
    for name, r in buckets.items():
        status = r["Properties"].get("VersioningConfiguration", {}).get("Status")
        expect(status == "Enabled", f"{name}: versioning enabled")
        expect(r.get("DeletionPolicy") == "Retain", f"{name}: DeletionPolicy Retain")
    tls_only = {
        json.dumps(r["Properties"]["Bucket"])
        for r in of_type(template, "AWS::S3::BucketPolicy").values()
        for s in r["Properties"]["PolicyDocument"]["Statement"]
        if s.get("Effect") == "Deny" and s.get("Condition", {}).get("Bool", {}).get("aws:SecureTransport") == "false"
    }
    for name in buckets:
        expect(json.dumps({"Ref": name}) in tls_only, f"{name}: a bucket policy denying requests without TLS")
    return problems


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cdk_out", help="the CDK app's output directory (cdk synth -o)")
    ap.add_argument("--sam", default="template.yaml", help="the SAM template (default: %(default)s)")
    ap.add_argument("--sam-out", help="also write the transformed SAM template here")
    args = ap.parse_args()

    sam = sam_transform(args.sam)
    if args.sam_out:
        with open(args.sam_out, "w") as f:
            json.dump(sam, f, indent=1)
    cdk_path, cdk = cdk_template(args.cdk_out)
    failed = False

    sam_types = Counter(r["Type"] for r in sam["Resources"].values())
    cdk_types = Counter(r["Type"] for r in cdk["Resources"].values())
    rows = [
        (t, sam_types[t], cdk_types[t], "" if sam_types[t] == cdk_types[t] else "<-- differs")
        for t in sorted(sam_types | cdk_types)
    ]
    rows.append(("total", sum(sam_types.values()), sum(cdk_types.values()), ""))
    print(f"Resource types: {args.sam} (SAM, transformed) vs {cdk_path} (CDK)\n")
    print(table(rows, ("type", "SAM", "CDK", "")))
    if sam_types != cdk_types:
        failed = True
        print("\nFAIL: the resource types or counts differ")

    ids = [
        (k, sam["Resources"].get(k, {}).get("Type", "-"), cdk["Resources"].get(k, {}).get("Type", "-"))
        for k in sorted(set(sam["Resources"]) | set(cdk["Resources"]))
    ]
    ids = [r for r in ids if r[1] != r[2]]
    if ids:
        failed = True
        print("\nFAIL: logical ids differ\n")
        print(table(ids, ("logical id", "SAM", "CDK")))

    sam_params = {k: parameter_shape(v) for k, v in sam.get("Parameters", {}).items()}
    cdk_params = {
        k: parameter_shape(v) for k, v in cdk.get("Parameters", {}).items() if k not in CDK_ONLY_PARAMETERS
    }
    params = [
        (k, json.dumps(sam_params.get(k, "-")), json.dumps(cdk_params.get(k, "-")))
        for k in sorted(set(sam_params) | set(cdk_params))
        if sam_params.get(k) != cdk_params.get(k)
    ]
    if params:
        failed = True
        print("\nFAIL: parameters differ\n")
        print(table(params, ("parameter", "SAM", "CDK")))

    outputs = sorted(set(sam.get("Outputs", {})) ^ set(cdk.get("Outputs", {})))
    if outputs:
        failed = True
        print(f"\nFAIL: outputs in only one template: {', '.join(outputs)}")

    print()
    for name, template in [("SAM", sam), ("CDK", cdk)]:
        problems = semantic_problems(template)
        print(f"{name}: {'OK' if not problems else 'FAIL'} " + "; ".join(problems or ["semantic checks"]))
        failed |= bool(problems)

    print("\nFAIL" if failed else "\nOK: same resources, parameters and outputs")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

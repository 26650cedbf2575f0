#!/usr/bin/env python3
"""Readiness probes and conformance checks for Prism's local servers.

Runs in $PRISM_HOME/venv (confluent-kafka, boto3) with the variables that
`servers.sh env` prints. Used by servers.sh (`ready NAME`) and test.sh
(`conformance`): the conformance checks pin down the server behaviour that
Prism's adapters rely on, so a server swap or upgrade that breaks it fails
loudly here instead of somewhere deep inside a service test.
"""

import argparse
import base64
import hashlib
import io
import json
import os
import sys
import time
import urllib.error
import urllib.request
import uuid

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import ClientError
from confluent_kafka import Consumer, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic

MIB = 1024 * 1024


def env(name):
    value = os.environ.get(name)
    if not value:
        sys.exit(f"probe.py: {name} is not set; run it through deploy/local/servers.sh")
    return value


# ---------------------------------------------------------------- clients


def kafka_config(**extra):
    # log_level 0 keeps librdkafka's connection-refused chatter out of the
    # readiness loop's output.
    return {"bootstrap.servers": env("PRISM_KAFKA__BROKERS"), "log_level": 0, **extra}


def s3_client(secret=None, retries=2):
    return boto3.client(
        "s3",
        endpoint_url=env("PRISM_S3__ENDPOINT"),
        region_name=env("AWS_REGION"),
        aws_access_key_id=env("AWS_ACCESS_KEY_ID"),
        aws_secret_access_key=secret or env("AWS_SECRET_ACCESS_KEY"),
        config=Config(
            signature_version="s3v4",
            s3={"addressing_style": "path"},
            connect_timeout=2,
            read_timeout=30,
            retries={"max_attempts": retries},
        ),
    )


def couch(method, path, body=None, auth=True):
    """One CouchDB request; returns (status, decoded JSON body)."""
    request = urllib.request.Request(env("PRISM_COUCHDB__URL") + path, method=method)
    if body is not None:
        request.data = json.dumps(body).encode()
        request.add_header("Content-Type", "application/json")
    if auth:
        pair = f"{env('PRISM_COUCHDB__USERNAME')}:{env('PRISM_COUCHDB__PASSWORD')}"
        request.add_header("Authorization", "Basic " + base64.b64encode(pair.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


# ---------------------------------------------------------------- readiness


def kafka_ready():
    metadata = AdminClient(kafka_config()).list_topics(timeout=2)
    if not metadata.brokers:
        raise RuntimeError("metadata lists no broker")


def s3_ready():
    s3_client(retries=0).list_buckets()


def couchdb_ready():
    status, body = couch("GET", "/", auth=False)
    if status != 200:
        raise RuntimeError(f"GET / answered {status}")
    status, body = couch("GET", "/_session")
    if "_admin" not in (body or {}).get("userCtx", {}).get("roles", []):
        raise RuntimeError(f"admin login not accepted yet: {status} {body}")


READY_CHECKS = {"kafka": kafka_ready, "s3": s3_ready, "couchdb": couchdb_ready}


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_ready(name, timeout, pid=None):
    deadline = time.monotonic() + timeout
    while True:
        if pid is not None and not alive(pid):
            print(f"{name} (pid {pid}) exited while starting", file=sys.stderr)
            return 1
        try:
            READY_CHECKS[name]()
            return 0
        except Exception as error:  # any failure just means "not yet"
            if time.monotonic() > deadline:
                print(f"{name} not ready after {timeout:.0f}s: {error}", file=sys.stderr)
                return 1
            time.sleep(0.3)


# ---------------------------------------------------------------- conformance


class Checks:
    def __init__(self):
        self.passed = 0
        self.failed = []

    def check(self, name, condition, detail=""):
        if condition:
            self.passed += 1
        else:
            self.failed.append(name)
            print(f"FAIL {name} {detail}", file=sys.stderr)

    def expect_error(self, name, call, code):
        """CODE is an S3 error code, or an HTTP status where servers differ in the code."""
        try:
            call()
        except ClientError as error:
            got = error.response["Error"]["Code"]
            status = str(error.response["ResponseMetadata"]["HTTPStatusCode"])
            self.check(name, code in (got, status), f"expected {code}, got {got} ({status})")
            return
        self.check(name, False, f"expected {code}, call succeeded")


def quoted_md5(data):
    return '"' + hashlib.md5(data).hexdigest() + '"'


def s3_conformance(checks):
    s3 = s3_client()
    bucket = "prism-conformance-" + uuid.uuid4().hex[:12]
    s3.create_bucket(Bucket=bucket)
    try:
        keys = {
            "plain.jpg": b"plain",
            "with space.jpg": b"space",
            "dir/sub/deep.png": b"slashes",
            "unicod\u00e9/\u00f1\u6587\u5b57.jpg": b"unicode",
            "plus+sign.jpg": b"plus",
            "percent%20literal.jpg": b"percent",
        }
        for key, body in keys.items():
            etag = s3.put_object(Bucket=bucket, Key=key, Body=body)["ETag"]
            checks.check(f"s3 put etag {key!r}", etag == quoted_md5(body), etag)
            got = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
            checks.check(f"s3 get {key!r}", got == body)
            head = s3.head_object(Bucket=bucket, Key=key)
            checks.check(f"s3 head {key!r}", head["ETag"] == etag and head["ContentLength"] == len(body))

        listed = {o["Key"]: o for o in s3.list_objects_v2(Bucket=bucket)["Contents"]}
        checks.check("s3 list returns every key verbatim", set(listed) == set(keys), sorted(listed))
        checks.check(
            "s3 list etags",
            all(listed.get(k, {}).get("ETag") == quoted_md5(b) for k, b in keys.items()),
        )

        big = os.urandom(9 * MIB)
        etag = s3.put_object(Bucket=bucket, Key="big/single.bin", Body=big)["ETag"]
        checks.check("s3 put 9 MiB", etag == quoted_md5(big), etag)
        s3.upload_fileobj(
            io.BytesIO(big),
            bucket,
            "big/multipart.bin",
            Config=TransferConfig(multipart_threshold=5 * MIB, multipart_chunksize=5 * MIB),
        )
        etag = s3.head_object(Bucket=bucket, Key="big/multipart.bin")["ETag"]
        checks.check("s3 multipart etag is md5-of-parts with part count", etag.endswith('-2"'), etag)
        got = s3.get_object(Bucket=bucket, Key="big/multipart.bin")["Body"].read()
        checks.check("s3 get multipart", got == big)
        ranged = s3.get_object(Bucket=bucket, Key="big/single.bin", Range="bytes=100-199")
        checks.check(
            "s3 ranged get",
            ranged["Body"].read() == big[100:200] and ranged["ResponseMetadata"]["HTTPStatusCode"] == 206,
        )

        for i in range(5):
            s3.put_object(Bucket=bucket, Key=f"page/{i}", Body=b"x")
        seen, token, pages = [], None, 0
        while True:
            extra = {"ContinuationToken": token} if token else {}
            page = s3.list_objects_v2(Bucket=bucket, Prefix="page/", MaxKeys=2, **extra)
            pages += 1
            seen += [o["Key"] for o in page.get("Contents", [])]
            if not page["IsTruncated"]:
                break
            token = page["NextContinuationToken"]
        checks.check("s3 list prefix + continuation", (pages, seen) == (3, [f"page/{i}" for i in range(5)]))

        s3.delete_object(Bucket=bucket, Key="plain.jpg")
        checks.expect_error("s3 head deleted", lambda: s3.head_object(Bucket=bucket, Key="plain.jpg"), "404")
        checks.expect_error("s3 get missing", lambda: s3.get_object(Bucket=bucket, Key="plain.jpg"), "NoSuchKey")
        # S3 and MinIO say SignatureDoesNotMatch, Garage AccessDenied: both 403.
        checks.expect_error("s3 wrong secret refused", lambda: s3_client(secret="wrong", retries=0).list_buckets(), "403")
    finally:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for item in page.get("Contents", []):
                s3.delete_object(Bucket=bucket, Key=item["Key"])
        s3.delete_bucket(Bucket=bucket)


def couchdb_conformance(checks):
    db = "/prism-conformance-" + uuid.uuid4().hex[:12]
    status, _ = couch("PUT", db)
    checks.check("couchdb create database", status == 201, status)
    try:
        status, _ = couch("PUT", db)
        checks.check("couchdb create existing database -> 412", status == 412, status)
        status, created = couch("PUT", db + "/claim-1", {"owner": "a"})
        checks.check("couchdb put new id", status == 201, status)
        status, body = couch("PUT", db + "/claim-1", {"owner": "b"})
        checks.check("couchdb put same id again -> 409", status == 409 and body["error"] == "conflict", status)
        stale = {"owner": "c", "_rev": "1-" + "0" * 32}
        status, _ = couch("PUT", db + "/claim-1", stale)
        checks.check("couchdb put stale _rev -> 409", status == 409, status)
        status, doc = couch("GET", db + "/claim-1")
        checks.check("couchdb get", status == 200 and doc["owner"] == "a" and doc["_rev"] == created["rev"])
        status, found = couch("POST", db + "/_find", {"selector": {"owner": "a"}})
        checks.check("couchdb _find", status == 200 and [d["_id"] for d in found["docs"]] == ["claim-1"])
        # pouchdb-server leaves new databases open to anyone (CouchDB 3 does not);
        # members in _security close them, as on CouchDB.
        admin_only = {"members": {"roles": ["_admin"]}, "admins": {"roles": ["_admin"]}}
        couch("PUT", db + "/_security", admin_only)
        status, _ = couch("PUT", db + "/anonymous", {"x": 1}, auth=False)
        checks.check("couchdb anonymous write refused", status == 401, status)
    finally:
        couch("DELETE", db)


def kafka_conformance(checks):
    topic = "prism-conformance-" + uuid.uuid4().hex[:12]
    admin = AdminClient(kafka_config())
    admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])[topic].result(10)
    try:
        producer = Producer(kafka_config(**{"enable.idempotence": True}))
        for i in range(4):
            producer.produce(topic, key=f"k{i}", value=f"v{i}", headers={"h": b"1"})
        checks.check("kafka produce", producer.flush(10) == 0)
        consumer = Consumer(
            kafka_config(
                **{
                    "group.id": topic,
                    "auto.offset.reset": "earliest",
                    # Tansu holds a new group's first join for half the session timeout.
                    "session.timeout.ms": 6000,
                }
            )
        )
        consumer.subscribe([topic])
        received, deadline = {}, time.monotonic() + 20
        while len(received) < 4 and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None:
                continue
            if message.error():
                raise KafkaException(message.error())
            received[message.key().decode()] = (message.value().decode(), message.headers())
        consumer.close()
        expected = {f"k{i}": (f"v{i}", [("h", b"1")]) for i in range(4)}
        checks.check("kafka consume in a group with keys and headers", received == expected, received)
    finally:
        admin.delete_topics([topic])[topic].result(10)


def conformance():
    checks = Checks()
    for name, run in [("s3", s3_conformance), ("couchdb", couchdb_conformance), ("kafka", kafka_conformance)]:
        try:
            run(checks)
        except Exception as error:
            checks.check(f"{name} conformance ran to the end", False, repr(error))
    print(f"server conformance: {checks.passed} checks passed, {len(checks.failed)} failed")
    return 1 if checks.failed else 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    ready = commands.add_parser("ready", help="wait until a server answers real requests")
    ready.add_argument("server", choices=sorted(READY_CHECKS))
    ready.add_argument("--timeout", type=float, default=30)
    ready.add_argument("--pid", type=int, help="give up at once if this process exits")
    commands.add_parser("conformance", help="check the server behaviour Prism relies on")
    args = parser.parse_args()
    if args.command == "ready":
        return wait_ready(args.server, args.timeout, args.pid)
    return conformance()


if __name__ == "__main__":
    sys.exit(main())

"""Artifacts in an S3-compatible bucket: ``s3://bucket/prefix`` → ``<prefix>/sha256/<hex>``.

An upload is an S3 multipart upload straight to the final key, completed only
when the streamed sha256 matches the declared one and aborted otherwise.  An
incomplete multipart upload is invisible to readers, so a crash mid-upload never
exposes a partial object (set an ``AbortIncompleteMultipartUpload`` lifecycle
rule on the bucket to reclaim the parts).  Endpoint and credentials come from
boto3's usual sources (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, …).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import urlparse

import anyio.to_thread

from modelyard.registry.artifacts.base import ArtifactStore, StoredArtifact, check_expected, hash_blocks

PART_SIZE = 8 << 20  # S3 parts must be ≥ 5 MiB except the last
READ_BLOCK = 1 << 20


class S3ArtifactStore(ArtifactStore):
    def __init__(self, bucket: str, prefix: str = "", client: Any | None = None) -> None:
        import boto3

        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.client = client or boto3.client("s3")

    @classmethod
    def from_url(cls, url: str) -> S3ArtifactStore:
        parsed = urlparse(url)
        if not parsed.netloc:
            raise ValueError(f"invalid S3 URL {url!r}: expected s3://bucket[/prefix]")
        return cls(parsed.netloc, parsed.path)

    def key_for(self, hex_digest: str) -> str:
        return f"{self.prefix}/sha256/{hex_digest}" if self.prefix else f"sha256/{hex_digest}"

    async def put(self, expected_hex: str, chunks: AsyncIterator[bytes]) -> StoredArtifact:
        key = self.key_for(expected_hex)
        upload = await anyio.to_thread.run_sync(
            lambda: self.client.create_multipart_upload(Bucket=self.bucket, Key=key)
        )
        upload_id = upload["UploadId"]
        parts: list[dict[str, Any]] = []
        buffer = bytearray()

        def send_part() -> None:
            answer = self.client.upload_part(Bucket=self.bucket, Key=key, UploadId=upload_id,
                                             PartNumber=len(parts) + 1, Body=bytes(buffer))
            parts.append({"PartNumber": len(parts) + 1, "ETag": answer["ETag"]})
            buffer.clear()

        def sink(block: bytes) -> None:
            buffer.extend(block)
            if len(buffer) >= PART_SIZE:
                send_part()

        completed = False
        try:
            stored = await hash_blocks(chunks, sink)
            check_expected(expected_hex, stored)
            if buffer or not parts:
                await anyio.to_thread.run_sync(send_part)
            await anyio.to_thread.run_sync(lambda: self.client.complete_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}))
            completed = True
            return stored
        finally:
            if not completed:
                await anyio.to_thread.run_sync(lambda: self.client.abort_multipart_upload(
                    Bucket=self.bucket, Key=key, UploadId=upload_id))

    def size(self, hex_digest: str) -> int | None:
        from botocore.exceptions import ClientError

        try:
            return int(self.client.head_object(Bucket=self.bucket, Key=self.key_for(hex_digest))["ContentLength"])
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise

    def open_range(self, hex_digest: str, start: int, end: int) -> Iterator[bytes]:
        answer = self.client.get_object(Bucket=self.bucket, Key=self.key_for(hex_digest), Range=f"bytes={start}-{end}")
        body = answer["Body"]
        try:
            yield from body.iter_chunks(READ_BLOCK)
        finally:
            body.close()

    def delete(self, hex_digest: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self.key_for(hex_digest))

    def list_blobs(self) -> Iterator[tuple[str, float]]:
        prefix = self.key_for("")
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            for item in page.get("Contents", ()):
                name = item["Key"][len(prefix):]
                if len(name) == 64 and "/" not in name:
                    yield name, item["LastModified"].timestamp()

    def check(self) -> None:
        self.client.head_bucket(Bucket=self.bucket)

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

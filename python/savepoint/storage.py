"""Where checkpoint roots live: a local directory, or a prefix of an S3 bucket.

    s3://bucket/prefix/<checkpoint name>/meta.json, <key>.safetensors, PINNED ...

holds the same files as a checkpoint directory. S3 has no directories: a checkpoint name is
listed when its meta.json object exists, and objects under a name without one (a save not
finished) are not seen at all. Paths stay strings ("s3://bucket/prefix/CKPT+x/meta.json"), so
errors name them the same way as local files.

S3 goes through boto3 (Debian: python3-boto3), imported only for s3:// paths. Credentials and
region come from the environment as boto3 takes them; the endpoint from AWS_ENDPOINT_URL_S3 or
AWS_ENDPOINT_URL (passed explicitly: boto3 reads them itself only from 1.28 on), with path-style
addressing for such a custom endpoint (a local server, MinIO...). Requests are retried in
botocore's "standard" mode, $AWS_MAX_ATTEMPTS attempts (default 5). Every error comes out as an
OSError naming the object: FileNotFoundError when the object or bucket does not exist.
"""

import errno
import os
import stat
import threading

from .errors import UsageError

SCHEME = "s3://"


def is_remote(path):
    return isinstance(path, str) and path.startswith(SCHEME)


def join(root, *names):
    return "/".join([root.rstrip("/")] + list(names)) if is_remote(root) else os.path.join(root, *names)


def check_root(root):
    """FileNotFoundError unless `root` is a directory (on S3: the bucket exists)."""
    if is_remote(root):
        return _S3.check_root(root)
    if not os.path.isdir(root):
        raise FileNotFoundError("savepoint: no such directory: %s" % root)


def list_dirs(root, name_prefix, marker):
    """The sorted names under `root` that start with `name_prefix`: local, the directories (no
    symlinks); on S3, the names that hold a `marker` object (their meta.json)."""
    if is_remote(root):
        return _S3.list_dirs(root, name_prefix, marker)
    with os.scandir(root) as entries:
        names = sorted(e.name for e in entries if e.name.startswith(name_prefix))
    out = []
    for name in names:
        try:
            if stat.S_ISDIR(os.lstat(os.path.join(root, name)).st_mode):
                out.append(name)
        except FileNotFoundError:
            pass
    return out


def lstat(path):
    """(size, is a regular file) without following symlinks, or None when it does not exist."""
    if is_remote(path):
        return _S3.lstat(path)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    return st.st_size, stat.S_ISREG(st.st_mode)


def read(path, offset=0, size=None, limit=None):
    """The bytes of a file from `offset`, `size` of them at most (None: to its end); on S3 a
    GET, ranged where only part of the object is asked for. `limit`: the whole file, but no more
    than `limit` bytes of it (a plain GET whose body is read no further: no Range, which S3
    refuses on an empty object, and s3rver answers with a body it never sends)."""
    if is_remote(path):
        return _S3.read(path, offset, size, limit)
    with open(path, "rb") as f:
        if offset:
            f.seek(offset)
        caps = [n for n in (size, limit) if n is not None]
        return f.read(min(caps) if caps else -1)


class _S3:
    _clients = {}
    _lock = threading.Lock()
    READ_ATTEMPTS = 3  # a body cut off while streaming (botocore retries the request, not the body)

    @staticmethod
    def split(path):
        bucket, _, key = path[len(SCHEME):].partition("/")
        if not bucket:
            raise UsageError("savepoint: '%s' names no bucket (s3://bucket/prefix)" % path)
        return bucket, key.strip("/")

    @classmethod
    def client(cls):
        try:
            import boto3
            from botocore.config import Config
        except ImportError:
            raise ImportError("savepoint: s3:// paths need boto3 (Debian: python3-boto3)") from None
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None
        region = os.environ.get("AWS_REGION") or None  # boto3 before 1.28 reads only AWS_DEFAULT_REGION
        attempts = int(os.environ.get("AWS_MAX_ATTEMPTS") or 5)
        settings = (endpoint, region, attempts, os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_PROFILE"))
        with cls._lock:
            if settings not in cls._clients:
                config = Config(retries={"total_max_attempts": attempts, "mode": "standard"},
                                s3={"addressing_style": "path"} if endpoint else None)
                cls._clients[settings] = boto3.session.Session().client("s3", endpoint_url=endpoint,
                                                                        region_name=region, config=config)
            return cls._clients[settings]

    @staticmethod
    def error(e, path):
        """An OSError for a boto3/botocore exception: FileNotFoundError for a missing object."""
        response = getattr(e, "response", None) or {}
        code = str(response.get("Error", {}).get("Code", ""))
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in ("NoSuchKey", "NoSuchBucket", "404", "NotFound") or status == 404:
            return FileNotFoundError(errno.ENOENT, str(e), path)
        return OSError(errno.EIO, str(e), path)

    @classmethod
    def call(cls, path, fn, **kwargs):  # after client(): boto3 is there
        from botocore.exceptions import BotoCoreError, ClientError
        try:
            return fn(**kwargs)
        except (BotoCoreError, ClientError) as e:
            raise cls.error(e, path) from None

    @classmethod
    def check_root(cls, root):
        bucket, _ = cls.split(root)
        client = cls.client()
        try:
            cls.call(root, client.head_bucket, Bucket=bucket)
        except FileNotFoundError:
            raise FileNotFoundError("savepoint: no such bucket: %s (%s)" % (bucket, root)) from None

    @classmethod
    def list_dirs(cls, root, name_prefix, marker):
        bucket, key = cls.split(root)
        base = key + "/" if key else ""
        client = cls.client()
        from botocore.exceptions import BotoCoreError, ClientError
        names = set()
        try:
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=base + name_prefix):
                for obj in page.get("Contents", []):
                    name, slash, rest = obj["Key"][len(base):].partition("/")
                    if slash and rest == marker:
                        names.add(name)
        except (BotoCoreError, ClientError) as e:
            raise cls.error(e, root) from None
        return sorted(names)

    @classmethod
    def lstat(cls, path):
        bucket, key = cls.split(path)
        client = cls.client()
        try:
            head = cls.call(path, client.head_object, Bucket=bucket, Key=key)
        except FileNotFoundError:
            return None
        return head["ContentLength"], True

    @classmethod
    def read(cls, path, offset, size, limit):
        bucket, key = cls.split(path)
        client = cls.client()
        from botocore.exceptions import BotoCoreError, ClientError
        kwargs = {"Bucket": bucket, "Key": key}
        if size == 0:
            return b""
        if offset or size is not None:  # (a limit is not a range)
            kwargs["Range"] = "bytes=%d-%s" % (offset, "" if size is None else offset + size - 1)
        for attempt in range(cls.READ_ATTEMPTS):
            try:
                body = client.get_object(**kwargs)["Body"]
            except ClientError as e:
                if e.response.get("Error", {}).get("Code") == "InvalidRange":
                    return b""  # offset at or past the end (an empty object, say)
                raise cls.error(e, path) from None
            except BotoCoreError as e:
                raise cls.error(e, path) from None
            try:
                return body.read(limit)
            except Exception as e:  # botocore's IncompleteReadError, urllib3's ProtocolError...
                if attempt + 1 == cls.READ_ATTEMPTS:
                    raise OSError(errno.EIO, "the body was cut off %d times: %s" % (cls.READ_ATTEMPTS, e), path) from None
            finally:
                body.close()

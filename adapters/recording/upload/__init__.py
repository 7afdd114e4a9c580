"""Object storage: every recording uploaded to an S3-compatible bucket while it is being
recorded, resumable after a crash, with a fallback target (``docs/upload.md``).

* :mod:`.sink`: :class:`UploadSink`, the sink that follows the file sink;
* :mod:`.uploader`: :class:`Uploader` and :class:`UploadConfig`, the threads and the failure
  policy;
* :mod:`.job`: one recording's upload, step by step; :mod:`.journal`: its record on disk;
* :mod:`.s3`: the boto3 layer (timeouts, tries, error kinds); :mod:`.keys`: targets and keys;
* :mod:`.resume`: the recordings already on disk (a restart, ``meetstream-live upload``).

boto3 is imported only when a client is made (the ``upload`` extra).
"""

from .job import MIN_PART_SIZE, FinalInfo, Job
from .journal import UploadJournal, journal_path
from .keys import DEFAULT_KEY_TEMPLATE, KeyTemplate, Target, parse_target
from .s3 import RetryPolicy, S3Error, Storage, make_client
from .sink import UploadSink
from .uploader import UploadConfig, Uploader

__all__ = [
    "DEFAULT_KEY_TEMPLATE",
    "MIN_PART_SIZE",
    "FinalInfo",
    "Job",
    "KeyTemplate",
    "RetryPolicy",
    "S3Error",
    "Storage",
    "Target",
    "UploadConfig",
    "UploadJournal",
    "UploadSink",
    "Uploader",
    "journal_path",
    "make_client",
    "parse_target",
]

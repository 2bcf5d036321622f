"""The content-addressed, resumable teacher cache (plain Python + pyarrow; no Ray).

Layout (DESIGN §5)::

    <root>/<fingerprint_id>/
        manifest.json        fingerprint, dim, dtype, the shard list (file, rows, bytes, sha256), total
        shard-000001-<rand>.parquet   key string, vector fixed_size_list<float16|float32>[dim]
        quarantine.jsonl     one line per failed row: key, prompt preview, reason, time
        embed_stats.json     the last `armada embed` run's figures (written by embed.py)
        journal/<writer>.jsonl  replies as they arrive, fsynced by the actor that received them

- A row's key is ``sha256(fingerprint_id + "\\0" + prompt)``: the same prompt in two tasks is queried
  once; another teacher, recipe or prompt template has another fingerprint, hence another folder.
- Each shard carries an explicit Arrow schema and, in its Parquet schema metadata, the fingerprint, dim,
  dtype and a checksum of its content; these and the file's sha256 in the manifest are checked when a process
  first reads the shard's vectors, so a shard that does not belong here, or was changed, is an error, never
  silent garbage.
- Writes are atomic: the shard goes to a temporary file, is fsynced and ``os.replace``d into place, then
  the manifest is rewritten the same way, all under a file lock (several writers are safe). A process
  killed at any point leaves either no shard or a complete one; a complete shard missing from the
  manifest (killed between the two renames) is re-adopted on the next open after its content checksum
  is verified, and anything else is set aside as ``*.rejected``.
- A paid answer is durable the moment it arrives: every embed actor appends each batch's good vectors to its
  own journal (fsynced, under an OS lock held for the actor's life) before handing them on; shards are
  written by the driver as before. ``replay_journals`` (run at the start and end of every embed) turns the
  journals of dead writers into a shard, so a run killed between a reply and its shard loses nothing but
  the requests still on the wire (issue 13: 16 % of a killed run's answers were asked and paid for again).
- ``lookup`` reads only the shards and row groups that hold the requested keys, one shard at a time, and
  only the vector column.
- A run that trained on the cache records it as its dataset input: :func:`dataset_view` is how the cache
  presents itself there (a name, its fingerprint id as digest, one row per shard), so tracking needs no
  knowledge of the manifest.
- Who opens it: the driver resolves the teacher once (:func:`resolve_teacher_identity`, which builds the teacher
  from its config to fingerprint it) and hands that :class:`~armada_ray.fingerprint.TeacherIdentity` to the
  workers; a worker opens the cache by it (:func:`open_cache`) and never fingerprints the teacher itself, so
  every rank on every node reads the folder the driver chose. :class:`TeacherCache` itself needs only the
  fingerprint hashing of :mod:`armada_ray.fingerprint`.


Modules: :mod:`~armada_ray.cache.store` (the cache and its dataset view), :mod:`~armada_ray.cache.journal` (the
reply journal), :mod:`~armada_ray.cache.identity` (the driver's and the
workers' way in; the only one that knows the teachers).
"""

from armada_ray.cache.identity import open_cache, open_cache_for, resolve_teacher_identity, teacher_config_key
from armada_ray.cache.journal import JOURNAL_DIR, ReplyJournal
from armada_ray.cache.store import (FORMAT, MANIFEST, QUARANTINE, ROW_GROUP, STATS, CacheError, CacheMismatchError,
                                    DatasetView, TeacherCache, cache_key, dataset_view)

__all__ = ["FORMAT", "JOURNAL_DIR", "MANIFEST", "QUARANTINE", "ROW_GROUP", "STATS", "CacheError",
           "CacheMismatchError", "DatasetView", "ReplyJournal", "TeacherCache", "cache_key", "dataset_view",
           "open_cache", "open_cache_for", "resolve_teacher_identity", "teacher_config_key"]

"""Every name the backend gives a file or folder on disk, defined once.

    MODEL_DIR/
      jobs.sqlite                 job state of every project (backend.scheduling.state; Redis instead with REDIS_URL)
      servers.json                the Label Studio servers that connected; <project> of the n-th: n * 10**9 + id
      .metrics/                   /metrics' samples of every process of `python -m backend` (backend.metrics)
      images/                     downloaded task files, each decoded before it entered (backend.job.tasks)
      embeddings/                 frozen-feature embeddings (isal_core.tasks.frozen), unless ISAL_EMBEDDING_CACHE
      <project>/
        project.json              the labeling config /setup received (a project is "known" once it exists)
        reference_l1.json         the first labeled set, when it stands in for a reference set
        jobs.json                 the last job number used (version names never repeat)
        connection.json           hostname and access token /setup sent (mode 0600), for the job worker,
                                  when LABEL_STUDIO_URL / _API_KEY are not set
        unpublished.json          versions whose predictions may be in Label Studio unpublished
        history.jsonl             one line per published version: labels, metric on R (the project page)
        clusters-<backbone>-k<k>-seed<s>.pt   the project's k-means centroids (cluster serving)
        thumbnails.npz            8x8 thumbnails of its image files, by path (near-duplicates; backend.job.hygiene)
        .tmp-<version>/           a version being built; renamed into place when its job publishes it
        .group-*/                 a torchrun group's records and result, while it runs
        <version>/
          meta.json               the version's description; written last: the mark of a whole version
          model.pt                the model's checkpoint (isal_core.train.checkpoints)
          s_test.pt               the engine's InfluenceScorer (s_test, its parameters, top-k)
          scores.npz              the job's pool: task ids, influence, predictions (and clusters)
          clusters.pt             the centroids the version's clusters come from (cluster serving)
          review.npz              the labeled tasks ranked by how likely their label is wrong (backend.job.round)
          hygiene.json            near-duplicate groups, leaks into R, outliers, the map (backend.job.hygiene)
"""
from __future__ import annotations

JOBS_DB = "jobs.sqlite"
SERVERS = "servers.json"  # the Label Studio servers that connected, in order (backend.storage.servers)
METRICS_DIR = ".metrics"  # prometheus-client's samples of every process (python -m backend)
IMAGE_CACHE = "images"
EMBEDDING_CACHE = "embeddings"

PROJECT = "project.json"
REFERENCE_L1 = "reference_l1.json"
JOB_COUNTER = "jobs.json"
CONNECTION = "connection.json"
UNPUBLISHED = "unpublished.json"
HISTORY = "history.jsonl"
STAGING_PREFIX = ".tmp-"
GROUP_PREFIX = ".group-"

META = "meta.json"
MODEL = "model.pt"
SCORER = "s_test.pt"
SCORES = "scores.npz"
CENTROIDS = "clusters.pt"
REVIEW = "review.npz"
#: The files every complete version holds.
VERSION_FILES = (META, MODEL, SCORER, SCORES)
#: A project's k-means centroids of one backbone, k and seed (str.format fields: backbone, k, seed).
CENTROIDS_OF_PROJECT = "clusters-{backbone}-k{k}-seed{seed}.pt"
HYGIENE = "hygiene.json"
THUMBNAILS = "thumbnails.npz"  # a project's images' 8x8 thumbnails, by file (backend.job.hygiene)

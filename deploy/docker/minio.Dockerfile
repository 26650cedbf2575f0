# syntax=docker/dockerfile:1
#
# MinIO built from source, for when quay.io/minio/minio stops serving images: MinIO's repository
# is archived and the community edition is source-only ("go install github.com/minio/minio@latest"
# is MinIO's own instruction, minio/minio#21675). RELEASE.2025-10-15T17-29-55Z is the first
# release with the fix for CVE-2025-62506 (commit c1a49490c78e); the build refuses a tag whose
# history lacks that commit. mc (for the healthcheck, `mc ready local`) is built the same way at
# the release compose.yaml pins for the minio/mc image.
#
#   docker build -f deploy/docker/minio.Dockerfile -t prism-minio:RELEASE.2025-10-15T17-29-55Z deploy/docker
#
# deploy/compose/minio-from-source.yaml builds it in place of the quay.io image:
#
#   docker compose -f compose.yaml -f deploy/compose/minio-from-source.yaml up --build -d
#
# Runs as uid 10001 (not root, unlike the upstream image): a minio-data volume first written by the
# upstream image is root-owned and must be chowned to 10001:10001 (or started afresh).

FROM golang:1.25-bookworm AS build

ARG MINIO_RELEASE=RELEASE.2025-10-15T17-29-55Z
# The same instant as the tag, as MinIO's release builds stamp it.
ARG MINIO_VERSION=2025-10-15T17:29:55Z
ARG MINIO_CVE_2025_62506_FIX=c1a49490c78e
ARG MC_RELEASE=RELEASE.2025-08-13T08-35-41Z

WORKDIR /src
# A blobless clone keeps every commit (for the ancestry check) but fetches file contents only for
# the tag that is checked out.
RUN git clone --quiet --filter=blob:none --branch "${MINIO_RELEASE}" --single-branch \
        https://github.com/minio/minio.git minio \
 && git -C minio merge-base --is-ancestor "${MINIO_CVE_2025_62506_FIX}" HEAD \
 && git clone --quiet --depth 1 --branch "${MC_RELEASE}" https://github.com/minio/mc.git mc

# Static binaries; the version strings MinIO's own release builds set (buildscripts/gen-ldflags.go)
# so `mc admin info` reports the release rather than DEVELOPMENT.
ENV CGO_ENABLED=0
RUN go build -C /src/minio -trimpath -tags kqueue \
        -ldflags "-s -w -X github.com/minio/minio/cmd.Version=${MINIO_VERSION} -X github.com/minio/minio/cmd.ReleaseTag=${MINIO_RELEASE}" \
        -o /out/minio . \
 && go build -C /src/mc -trimpath -ldflags "-s -w -X github.com/minio/mc/cmd.ReleaseTag=${MC_RELEASE}" -o /out/mc . \
 && install -m 0755 /src/minio/dockerscripts/docker-entrypoint.sh /out/docker-entrypoint.sh


FROM debian:bookworm-slim AS runtime

ARG MINIO_RELEASE=RELEASE.2025-10-15T17-29-55Z
LABEL org.opencontainers.image.title="minio" \
      org.opencontainers.image.description="MinIO ${MINIO_RELEASE} built from source (github.com/minio/minio)" \
      org.opencontainers.image.version="${MINIO_RELEASE}" \
      org.opencontainers.image.licenses="AGPL-3.0-only"

# ca-certificates: notification targets and KMS may be reached over TLS.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*

# A fixed uid/gid; /data is owned by it so a new named volume mounted there is writable. A real
# home: minio keeps ~/.minio/certs there and mc its config (with the `local` alias the healthcheck
# uses) in ~/.mc.
RUN groupadd --gid 10001 minio \
 && useradd --uid 10001 --gid 10001 --create-home --home-dir /home/minio --shell /usr/sbin/nologin minio \
 && mkdir /data \
 && chown 10001:10001 /data

# The same paths as the upstream image, so compose.yaml's entrypoint and healthcheck work unchanged.
COPY --from=build /out/minio /out/mc /usr/bin/
COPY --from=build /out/docker-entrypoint.sh /usr/bin/docker-entrypoint.sh

USER 10001:10001
VOLUME ["/data"]
EXPOSE 9000 9001
ENTRYPOINT ["/usr/bin/docker-entrypoint.sh"]
CMD ["minio"]

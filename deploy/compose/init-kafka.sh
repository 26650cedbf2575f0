#!/bin/sh
# Creates Prism's topics on the compose Kafka (run by the kafka-init service, apache/kafka image).
# Idempotent: existing topics are kept, and a topic with fewer partitions than wanted is grown
# (never shrunk; Kafka cannot). Partitions bound how many replicas of a stage can share its work.
set -eu

brokers="${PRISM_KAFKA__BROKERS:?}"
kafka_topics=/opt/kafka/bin/kafka-topics.sh

# Jobs and uploads are where stages scale out; results and dead letters are read by few.
ensure_topic() {
    name="$1"
    partitions="$2"
    "$kafka_topics" --bootstrap-server "$brokers" --create --if-not-exists \
        --topic "$name" --partitions "$partitions" --replication-factor 1
    current="$("$kafka_topics" --bootstrap-server "$brokers" --describe --topic "$name" |
        awk '{ for (i = 1; i < NF; i++) if ($i == "PartitionCount:") { print $(i + 1); exit } }')"
    if [ -z "$current" ]; then
        echo "could not read the partition count of $name" >&2
        exit 1
    fi
    if [ "$current" -lt "$partitions" ]; then
        echo "growing $name from $current to $partitions partitions"
        "$kafka_topics" --bootstrap-server "$brokers" --alter --topic "$name" --partitions "$partitions"
    fi
}

ensure_topic "${PRISM_TOPICS__UPLOADS:?}" 12
ensure_topic "${PRISM_TOPICS__THUMBNAIL_JOBS:?}" 12
ensure_topic "${PRISM_TOPICS__DETECT_JOBS:?}" 12
ensure_topic "${PRISM_TOPICS__CLASSIFY_JOBS:?}" 12
ensure_topic "${PRISM_TOPICS__THUMBNAIL_RESULTS:?}" 3
ensure_topic "${PRISM_TOPICS__DETECT_RESULTS:?}" 3
ensure_topic "${PRISM_TOPICS__CLASSIFY_RESULTS:?}" 3
ensure_topic "${PRISM_TOPICS__DEADLETTER:?}" 3

"$kafka_topics" --bootstrap-server "$brokers" --list

# The `pipeline` binary in a small runtime image.
#   docker build -t model-api-pipeline .
#   docker run --rm model-api-pipeline validate /etc/pipeline/pipelines.toml

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p pipeline \
    && cp target/release/pipeline /usr/local/bin/pipeline

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/pipeline pipeline \
    && mkdir -p /var/lib/pipeline/data /etc/pipeline \
    && chown -R pipeline /var/lib/pipeline
COPY --from=build /usr/local/bin/pipeline /usr/local/bin/pipeline
COPY pipelines.toml /etc/pipeline/pipelines.toml
COPY examples/prices /etc/pipeline/examples/prices
USER pipeline
WORKDIR /var/lib/pipeline
ENV PIPELINE_CONFIG=/etc/pipeline/pipelines.toml \
    PIPELINE_DATA=/var/lib/pipeline/data \
    PIPELINE_LOG_FORMAT=json
ENTRYPOINT ["pipeline"]
CMD ["run"]

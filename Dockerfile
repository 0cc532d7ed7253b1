# Capstan's container image: release builds of `capstan` and `capstanctl` on a distroless base.
#   docker build -t capstan:dev .
# The dependency layer is cached: it is rebuilt only when Cargo.toml/Cargo.lock change.

FROM rust:1.88-bookworm AS build
WORKDIR /src
# 1. Dependencies only (dummy sources), cached across source changes.
COPY Cargo.toml Cargo.lock ./
COPY crates/core/Cargo.toml crates/core/
COPY crates/db/Cargo.toml crates/db/
COPY crates/http/Cargo.toml crates/http/
COPY crates/iam/Cargo.toml crates/iam/
COPY crates/proto/Cargo.toml crates/proto/
COPY crates/bench/Cargo.toml crates/bench/
COPY crates/sdk/Cargo.toml crates/sdk/
COPY crates/cli/Cargo.toml crates/cli/
COPY examples/orders/Cargo.toml examples/orders/
COPY services/auth/Cargo.toml services/auth/
COPY services/policy/Cargo.toml services/policy/
COPY services/server/Cargo.toml services/server/
COPY tests/Cargo.toml tests/
RUN for d in crates/core crates/db crates/http crates/iam crates/proto crates/sdk crates/cli examples/orders services/auth services/policy services/server tests; do \
      mkdir -p $d/src && echo '' > $d/src/lib.rs; done \
 && echo 'fn main() {}' > crates/cli/src/main.rs && echo 'fn main() {}' > examples/orders/src/main.rs \
 && mkdir -p crates/cli/tests/it && echo '' > crates/cli/tests/it/main.rs \
 && mkdir -p crates/bench/src services/server/src && echo 'fn main() {}' > crates/bench/src/main.rs \
 && echo 'fn main() {}' > services/server/src/main.rs \
 && mkdir -p tests/it && echo '' > tests/it/main.rs \
 && mkdir -p migrations/postgres migrations/sqlite \
 && cargo build --release --locked -p capstan-server -p capstan-cli || true
# 2. The real sources.
COPY . .
RUN touch crates/*/src/lib.rs services/*/src/lib.rs services/server/src/main.rs crates/cli/src/main.rs \
 && cargo build --release --locked -p capstan-server --bin capstan -p capstan-cli --bin capstanctl

# Non-root (uid 65532, the chart's runAsUser), no shell, no package manager.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/capstan /usr/local/bin/capstan
# For `kubectl exec deploy/capstan -- capstanctl …` (it speaks HTTP to the pod itself).
COPY --from=build /src/target/release/capstanctl /usr/local/bin/capstanctl
USER 65532:65532
EXPOSE 8470
ENTRYPOINT ["/usr/local/bin/capstan"]
CMD ["serve"]

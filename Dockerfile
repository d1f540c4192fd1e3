# One image for every govmesh service: `govmesh serve engine|policy|verification|lineage`,
# and `govmesh db upgrade` for migrations (deploy/base runs each as its own pod).
#   docker build -t govmesh:0.1.0 .

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY protos/ protos/
COPY services/ services/
COPY clients/ clients/
COPY migrations/ migrations/
RUN python -m venv /opt/govmesh && /opt/govmesh/bin/pip install .

FROM python:3.11-slim
# A numeric user, so that Kubernetes can check runAsNonRoot; deploy/base runs as 10001.
RUN groupadd --system --gid 10001 govmesh \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin govmesh
COPY --from=build /opt/govmesh /opt/govmesh
ENV PATH=/opt/govmesh/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
USER 10001:10001
EXPOSE 50051 50052 50053 50054
ENTRYPOINT ["govmesh"]
CMD ["serve", "engine"]

# One image for every FateLlm node: seed, arbiter, party.
FROM mcr.microsoft.com/dotnet/sdk:10.0 AS build
RUN apt-get update && apt-get install -y --no-install-recommends g++ patchelf && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN dotnet publish FateLlm.Host -c Release -o /app

FROM mcr.microsoft.com/dotnet/runtime:10.0
WORKDIR /app
COPY --from=build /app .
VOLUME ["/state", "/data", "/models"]
ENTRYPOINT ["/app/fate-llm"]

"""Market data: the NYSE calendar and clocks, bar validation, CSV and synthetic sources, and the
incremental bar cache. Imports only store and the bottom modules (config, domain, errors, metrics);
never a broker, the model or the strategy."""

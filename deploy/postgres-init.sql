-- Runs once, on first start with an empty data volume.
-- Separate databases so MLflow's and Prefect's migrations never share tables.
CREATE DATABASE mlflow OWNER rollcast;
CREATE DATABASE prefect OWNER rollcast;

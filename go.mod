module github.com/wspresence/wspresence

go 1.27

require (
	github.com/golang-jwt/jwt/v5 v5.3.1
	github.com/google/uuid v1.6.0
	pgregory.net/rapid v1.3.0
)

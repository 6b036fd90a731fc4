from __future__ import annotations

from fastapi import APIRouter, status

from service.deps import AdminUser, CurrentUser, ReadSessionDep, SessionDep
from service.schemas.common import ERROR_RESPONSES, UserId
from service.schemas.users import UserCreate, UserRead, UserWithToken
from storage.users import create_user, get_user, list_users, rotate_token

router = APIRouter(prefix="/api/v1/users", tags=["users"], responses=ERROR_RESPONSES)


@router.post("", status_code=status.HTTP_201_CREATED, summary="Create a user (admin); the token is shown once")
def create(body: UserCreate, session: SessionDep, _: AdminUser) -> UserWithToken:
    """Creates a user with a role (`admin`, `engineer` or `annotator`) and a random API token. The token is in this
    answer only: the service keeps just its sha256 hash (`labelwheel users rotate-token` makes a new one)."""
    user, token = create_user(session, name=body.name, role=body.role)
    return UserWithToken(id=user.id, name=user.name, role=user.role, created_at=user.created_at, token=token)


@router.get("", summary="List users (admin)")
def index(session: ReadSessionDep, _: AdminUser) -> list[UserRead]:
    """Every user with their role, by id. Tokens are never shown."""
    return [UserRead.model_validate(u) for u in list_users(session)]


@router.get("/me", summary="The calling user")
def me(session: ReadSessionDep, principal: CurrentUser) -> UserRead:
    """The user the token belongs to: a way to check a token and see its role."""
    return UserRead.model_validate(get_user(session, user_id=principal.id))


@router.post("/{user_id}/token", summary="Replace a user's token (admin); the new one is shown once")
def rotate(user_id: UserId, session: SessionDep, _: AdminUser) -> UserWithToken:
    """Gives the user a new random token, in this answer only; the old one stops working at once (as
    `labelwheel users rotate-token`)."""
    user = get_user(session, user_id=user_id)
    token = rotate_token(session, name=user.name)
    return UserWithToken(id=user.id, name=user.name, role=user.role, created_at=user.created_at, token=token)
